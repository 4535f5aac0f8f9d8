"""Top-level URLs: the course pages, the lab API, accounts (Django's auth views, sign-up
and e-mail verification) and admin."""

from django.contrib import admin
from django.urls import include, path

from course import accounts

urlpatterns = [
    path("", include("course.urls")),
    path("api/", include("sandbox.urls")),
    path("accounts/signup/", accounts.signup, name="signup"),
    path("accounts/verify/", accounts.verify_email, name="verify_email"),
    path("accounts/verify/<uidb64>/<token>/", accounts.confirm_email, name="verify_email_confirm"),
    # Log-in, log-out, password change and reset, under Django's own route names.
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
