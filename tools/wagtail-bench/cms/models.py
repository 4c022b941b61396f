"""The certificate page as the certificate-titles schema has it
(/work/shared/schemas/wagtail-certificates.sql, table cms_certificatepage),
with only the field the migration reads and writes: Django selects declared
fields only, so the others need not be declared."""

from wagtail import blocks
from wagtail.fields import StreamField
from wagtail.models import Page


class CertificatePage(Page):
    signatories = StreamField(
        [
            (
                "signatory",
                blocks.StructBlock(
                    [
                        ("name", blocks.CharBlock()),
                        ("title_1", blocks.CharBlock()),
                        ("title_2", blocks.CharBlock(required=False)),
                        ("organization", blocks.CharBlock()),
                    ]
                ),
            )
        ],
        use_json_field=True,
    )

    class Meta:
        app_label = "cms"
