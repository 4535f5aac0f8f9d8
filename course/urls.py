"""Course pages and the launch endpoint."""

from django.urls import path

from . import views

app_name = "course"
urlpatterns = [
    path("", views.course_index, name="index"),
    path("lessons/<slug:slug>/", views.lesson_page, name="lesson"),
    path("api/lessons/<slug:slug>/lab", views.launch_lab, name="launch"),
]
