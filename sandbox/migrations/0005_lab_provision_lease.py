from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("sandbox", "0004_lab_run_seconds"),
    ]

    operations = [
        migrations.AddField(
            model_name="lab",
            name="lease_expires_at",
            field=models.DateTimeField(
                blank=True, help_text="Until when the provisioning run holding the lab vouches for it.", null=True
            ),
        ),
        migrations.AddField(
            model_name="lab",
            name="provision_requeues",
            field=models.PositiveSmallIntegerField(
                default=0, help_text="Times the provision sweep queued a lost provision task again."
            ),
        ),
    ]
