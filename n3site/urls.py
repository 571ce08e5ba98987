from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views

# The admin's "View site" link: / sends each user to their work (n3site.views.home).
admin.site.site_url = "/"
admin.site.site_header = "n3 administration"
admin.site.site_title = "n3"

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/policies/", include("api.urls")),
    path("review/", include("feedback.urls")),
]
