"""Lab API routes (mounted under /api/)."""

from django.urls import path

from . import views

app_name = "sandbox"
urlpatterns = [
    path("labs/<str:lab_id>/", views.lab_status, name="status"),
    path("labs/<str:lab_id>/stop", views.stop_lab, name="stop"),
    path("labs/<str:lab_id>/extend", views.extend_lab, name="extend"),
    path("labs/<str:lab_id>/break", views.break_lab, name="break"),
]
