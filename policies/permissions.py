from rest_framework.permissions import DjangoModelPermissions


class N3ModelPermissions(DjangoModelPermissions):
    """Placeholder: the service issue refines this (N3_PUBLIC_READ, view permissions)."""
