from django.conf import settings
from rest_framework.permissions import SAFE_METHODS, BasePermission


class N3ModelPermissions(BasePermission):
    """Each API view names the Django model permission a method needs, e.g.::

        required_permissions = {"GET": "policies.view_policyversion", "POST": "policies.add_policyversion"}

    Reads (GET, HEAD, OPTIONS) are open to everyone when ``settings.N3_PUBLIC_READ`` is on. Without
    credentials DRF answers 401 (TokenAuthentication, listed first, supplies the WWW-Authenticate
    header); with credentials but without the permission, 403. A method the view does not list is
    refused when the view handles it, so a new method cannot be left open by mistake.
    """

    def has_permission(self, request, view) -> bool:
        if request.method in SAFE_METHODS and settings.N3_PUBLIC_READ:
            return True
        if not (request.user and request.user.is_authenticated):
            return False
        method = "GET" if request.method in ("HEAD", "OPTIONS") else request.method
        perm = getattr(view, "required_permissions", {}).get(method)
        if perm is None:
            # No handler either: let the view answer 405. A handler without a permission: refuse.
            return not hasattr(view, request.method.lower())
        if not request.user.has_perm(perm):
            self.message = f"You do not have permission to do this (it needs '{perm}')."
            return False
        return True
