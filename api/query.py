"""Query-string parameters read strictly: an unknown or repeated parameter is a 400 naming it, not ignored."""
from rest_framework import serializers


class QuerySerializer(serializers.Serializer):
    """Validates ``request.query_params`` (a QueryDict): its fields are the parameters a view reads."""

    def to_internal_value(self, data):
        errors = {key: [f"Unknown query parameter (known: {', '.join(self.fields)})"]
                  for key in data if key not in self.fields}
        errors.update({key: ["Give it once."] for key in data if key in self.fields and len(data.getlist(key)) > 1})
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data.dict())
