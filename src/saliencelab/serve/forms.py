"""A submitted HTML form, read from the request body: `multipart/form-data` (a form with a file
input, RFC 7578) or `application/x-www-form-urlencoded`.

The standard library's `cgi` module that used to parse multipart bodies is gone (Python 3.13);
a multipart body is a MIME message, so the `email` package reads it (headers of each part:
`Content-Disposition: form-data; name="..."; filename="..."`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from urllib.parse import parse_qs

from ..core.errors import SaliencelabError

#: The most parts a form may have (the page's form sends about a hundred fields).
MAX_PARTS = 1000


@dataclass
class Upload:
    """A file from a file input: the name the browser gave (not trusted: shown escaped, never
    used as a path) and its bytes."""

    filename: str
    data: bytes


@dataclass
class Form:
    """Fields by name (a name may repeat: checkboxes) and uploaded files by field name."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        """The field's first value, stripped; `default` when absent or empty."""
        values = self.fields.get(name) or [""]
        return values[0].strip() or default

    def getall(self, name: str) -> list[str]:
        """Every non-empty value of the field, stripped, in order."""
        return [v.strip() for v in self.fields.get(name, []) if v.strip()]


def parse_form(content_type: str, body: bytes) -> Form:
    """The form in `body`, sent with the header `Content-Type: content_type`.

    Raises:
        SaliencelabError: another content type, or a multipart body without a boundary.
    """
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", errors="replace")
        return Form(fields=parse_qs(text, keep_blank_values=True))
    if kind != "multipart/form-data":
        raise SaliencelabError(
            f"The form came as {kind or 'no content type'!r}; send it as multipart/form-data "
            "(the page's form does) or application/x-www-form-urlencoded."
        )
    boundary = re.search(r'boundary="?([^";]+)"?', content_type, re.IGNORECASE)
    if boundary is None:
        raise SaliencelabError("The multipart form has no boundary in its Content-Type header.")
    parts = body.count(b"--" + boundary.group(1).strip().encode("latin-1")) - 1  # the last ends
    if parts > MAX_PARTS:  # parsing costs per part
        raise SaliencelabError(
            f"The form has {parts:,} parts, more than the page's form sends "
            f"({MAX_PARTS:,} at most)."
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise SaliencelabError("The multipart form could not be read; send it again.")
    form = Form()
    for part in message.iter_parts():
        _add_part(form, part)
    return form


def _add_part(form: Form, part: Message) -> None:
    name = part.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        return  # a part without a field name is not part of the form
    data = part.get_payload(decode=True) or b""
    filename = part.get_filename()
    if filename is not None:
        if data:  # an empty file input sends a part with filename="" and no bytes
            form.files[name] = Upload(filename, data)
        return
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        text = data.decode("utf-8", errors="replace")
    form.fields.setdefault(name, []).append(text)
