"""The request guard: an ASGI middleware that checks each POST to an endpoint before BentoML parses it.

BentoML answers a malformed form with a 500 (starlette's form errors are not its own), and it downloads a URL sent
as text in a file field (or in a form-urlencoded body). So every endpoint request is read here first, through
python-multipart (the parser starlette uses), into a spooled file (1 MB in memory, then disk), and refused with a
4xx and {"error": "<one line>"} unless it is a multipart form holding exactly the endpoint's fields: its file
fields as file uploads within the byte and image limits, its integer and number fields as short numbers, its text
fields as UTF-8 within TEXT_LIMIT. Only then is the body, re-encoded part by part, replayed to BentoML, which can
no longer fail on it or be made to fetch anything. BentoML JSON-decodes every text value it gets (a value nested
100,000 deep or holding a 5,000-digit number would end in a 500), so text fields reach it empty: their exact text,
and the client's file names (BentoML renames uploads), are handed to the endpoint in the request's scope
(`texts_of`, `filenames_of`), where serve/fields.py parses them with its own bounds. Routes that change the index
(WRITE_ROUTES) also need `Authorization: Bearer <token>` with the service's write token, checked before the body is
read; with no token configured they answer 403 (read-only).

    SSLForge.add_asgi_middleware(RequestGuard, forms=forms_of(SSLForge), limits=limits)
"""
from __future__ import annotations

import hmac
import json
import re
import typing
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from retrieval.text import shown
from serve.settings import Limits

TEXT_BYTES = 100  # an integer or number field's longest value
TEXT_LIMIT = 256 * 1024  # a text field's longest value (the user fields of up to max_images rows, as JSON)
WRITE_ROUTES = ("/add", "/remove")
TEXTS, FILENAMES = "sslforge.texts", "sslforge.filenames"  # scope keys: text fields as sent; upload file names
FILENAME_BYTES = 200  # BentoML names its temporary copy of an upload after the file name
PART_OVERHEAD = 4096  # bytes of boundary and part headers allowed per part on top of its data
DRAIN_BYTES = 64 * 2**20  # a refused body is read to its end up to this much, so the client gets the answer
CHUNK = 64 * 1024
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
INTEGER = re.compile(rb"[+-]?[0-9]+")
NUMBER = re.compile(rb"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class Refusal(Exception):
    """A request the guard answers itself; `drain`: read the rest of the body first (False: too big, just close)."""

    def __init__(self, status: int, message: str, drain: bool = True):
        super().__init__(message)
        self.status, self.drain = status, drain


class Disconnected(Exception):
    """The client went away (or a connection timeout closed it) while its body was read."""


@dataclass(frozen=True)
class Form:
    """What an endpoint takes: file fields (True: several files), integer, number and text fields."""

    route: str
    files: dict[str, bool]
    integers: tuple[str, ...]
    numbers: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()
    required: tuple[str, ...] = ()  # fields without a default (file fields always)

    @property
    def values(self) -> tuple[str, ...]:
        return self.integers + self.numbers + self.texts

    def usage(self) -> str:
        files = [f"'{n}' ({'image files' if many else 'an image file'})" for n, many in self.files.items()]
        kinds = [(self.integers, "an integer"), (self.numbers, "a number"), (self.texts, "text")]
        return f"{self.route} takes " + " and ".join(files + [f"'{n}' ({what})" for names, what in kinds
                                                              for n in names])

    def example(self) -> str:
        if self.files:
            return f"curl -F {next(iter(self.files))}=@photo.jpg http://HOST:PORT{self.route}"
        return f"curl -F {self.values[0]}=... http://HOST:PORT{self.route}"


def forms_of(service: typing.Any) -> dict[str, Form]:
    """The Form of each API of a BentoML service, from its input models (file fields are BentoML's multipart
    fields; the others must be int, float or str), by route."""
    forms = {}
    for api in service.apis.values():
        spec = api.input_spec
        fields = spec.model_fields
        files = {name: typing.get_origin(fields[name].annotation) is list for name in spec.multipart_fields}
        others = [n for n in fields if n not in files]
        by_type = {t: tuple(n for n in others if fields[n].annotation is t) for t in (int, float, typing.Any)}
        if sum(map(len, by_type.values())) != len(others):
            raise TypeError(f"{api.route}: the request guard checks file, int, float and text (typing.Any, read "
                            f"with texts_of) fields only")
        required = tuple(n for n in fields if n in files or fields[n].is_required())
        forms[api.route] = Form(api.route, files, by_type[int], by_type[float], by_type[typing.Any], required)
    return forms


def texts_of(request: typing.Any) -> dict[str, str]:
    """The text fields of a request the guard checked, exactly as the client sent them (a starlette Request)."""
    return request.scope.get(TEXTS, {})


def filenames_of(request: typing.Any, field: str) -> list[str]:
    """The file names the client gave the uploads of `field`, in order."""
    return request.scope.get(FILENAMES, {}).get(field, [])


class FormChecker:
    """python-multipart callbacks that refuse, part by part, anything the endpoint's Form does not take."""

    def __init__(self, form: Form, limits: Limits, out=None, boundary: bytes = b""):
        self.form, self.limits, self.out, self.boundary = form, limits, out, boundary
        self.counts: dict[str, int] = {}
        self.headers: list[tuple[bytes, bytes]] = []
        self.field, self.name, self.header, self.value = None, b"", b"", b""
        self.size, self.ended = 0, False
        self.texts: dict[str, str] = {}
        self.filenames: dict[str, list[str]] = {}

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_header_field": self.header_field, "on_header_value": self.header_value,
                "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
                "on_part_data": self.data, "on_part_end": self.part_end, "on_end": self.end}

    def begin(self) -> None:
        self.headers, self.field, self.size, self.value = [], None, 0, b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def header_end(self) -> None:
        self.headers.append((self.name.lower(), self.header))
        self.name, self.header = b"", b""

    def headers_finished(self) -> None:
        form = self.form
        if any(CONTROL.search(n + v) for n, v in self.headers):
            raise Refusal(400, "malformed multipart body: a control character in a part header")
        disposition = dict(self.headers).get(b"content-disposition")
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise Refusal(400, 'malformed multipart body: a part without Content-Disposition: form-data; name="..." '
                               f"(send the form as curl -F does: {form.example()})")
        try:
            field = options[b"name"].decode()
        except UnicodeDecodeError:
            raise Refusal(400, f"a field name that is not UTF-8: {form.usage()}") from None
        if field not in form.files and field not in form.values:
            raise Refusal(400, f"unknown field {field!r}: {form.usage()}")
        count = self.counts[field] = self.counts.get(field, 0) + 1
        filename = options.get(b"filename")
        if field in form.files:
            if filename is None:
                raise Refusal(400, f"field {field!r} must be a file upload, not text (the service fetches no URL): "
                                   f"{form.example()}")
            if len(filename) > FILENAME_BYTES:
                raise Refusal(400, f"field {field!r}: a file name of {len(filename):,} bytes; the limit is "
                                   f"{FILENAME_BYTES}")
            if not form.files[field] and count > 1:
                raise Refusal(400, f"field {field!r} takes one file per request: {form.usage()}")
            self.filenames.setdefault(field, []).append(filename.decode("utf-8", errors="replace"))
            if count > self.limits.max_images:
                raise Refusal(413, f"more than {self.limits.max_images} images in one request; the limit is "
                                   f"{self.limits.max_images}")
        else:
            if filename is not None:
                raise Refusal(400, f"field {field!r} must be a text value, not a file: {form.usage()}")
            if count > 1:
                raise Refusal(400, f"field {field!r} is given twice: {form.usage()}")
        self.field = field
        self.write(b"--" + self.boundary + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in self.headers) +
                   b"\r\n")

    def write(self, data: bytes) -> None:
        """Re-encode the checked form for BentoML: every part as sent, text fields without their value."""
        if self.out is not None:
            self.out.write(data)

    def data(self, data: bytes, start: int, end: int) -> None:
        self.size += end - start
        if self.field in self.form.files:
            if self.size > self.limits.max_bytes:
                raise Refusal(413, f"{self.field}: more than {self.limits.max_bytes:,} bytes in one upload; the "
                                   f"limit is {self.limits.max_bytes:,}")
            self.write(data[start:end])
        elif self.field in self.form.texts:
            if self.size > TEXT_LIMIT:
                raise Refusal(413, f"field {self.field!r}: more than {TEXT_LIMIT:,} bytes of text")
            self.value += data[start:end]
        elif self.size > TEXT_BYTES:
            what = "an integer" if self.field in self.form.integers else "a number"
            raise Refusal(413, f"field {self.field!r}: more than {TEXT_BYTES} bytes; it takes {what}")
        else:
            self.value += data[start:end]
            self.write(data[start:end])

    def part_end(self) -> None:
        self.write(b"\r\n")
        got = self.value[:20].decode(errors="replace")
        if self.field in self.form.integers and not INTEGER.fullmatch(self.value.strip()):
            raise Refusal(400, f"field {self.field!r} must be an integer (got {got!r}): {self.form.usage()}")
        if self.field in self.form.numbers and not NUMBER.fullmatch(self.value.strip()):
            raise Refusal(400, f"field {self.field!r} must be a number (got {got!r}): {self.form.usage()}")
        if self.field in self.form.texts:
            try:
                text = self.value.decode("utf-8")
            except UnicodeDecodeError:
                raise Refusal(400, f"field {self.field!r} must be UTF-8 text") from None
            if CONTROL.search(text.replace("\r\n", " ").replace("\n", " ").encode()):
                raise Refusal(400, f"field {self.field!r}: a control character in the text")
            self.texts[self.field] = text

    def end(self) -> None:
        self.ended = True
        self.write(b"--" + self.boundary + b"--\r\n")

    def finish(self) -> None:
        if not self.ended:
            raise Refusal(400, "malformed multipart body: it ends before its closing boundary")
        for field in self.form.files:
            if field not in self.counts:
                raise Refusal(400, f"no image in the request: upload it as a file in field {field!r} "
                                   f"({self.form.example()})")
        for field in self.form.required:
            if field not in self.counts:
                raise Refusal(400, f"field {field!r} is missing: {self.form.usage()}")


class RequestGuard:
    """ASGI middleware: checks POSTs to the routes in `forms`; everything else passes untouched."""

    def __init__(self, app, forms: dict[str, Form], limits: Limits, write_token: str | None = None):
        self.app, self.forms, self.limits, self.write_token = app, forms, limits, write_token

    async def __call__(self, scope, receive, send):
        form = self.forms.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if form is None:
            return await self.app(scope, receive, send)
        body, incoming = SpooledTemporaryFile(max_size=2**20), Body(receive)
        try:
            try:
                if form.route in WRITE_ROUTES:
                    self.authorise(scope)
                checker = await self.read(scope, incoming, form, body)
                scope[TEXTS], scope[FILENAMES] = checker.texts, checker.filenames
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"] + [
                    (b"content-length", str(body.tell()).encode())]  # the re-encoded body's
            except Refusal as e:
                return await self.refuse(incoming, send, e)
            except Disconnected:
                return None
            body.seek(0)
            return await self.app(scope, replay(body, receive), send)
        finally:
            body.close()

    def authorise(self, scope) -> None:
        """A write route: Refusal 403 unless the request carries the write token (none configured: read-only)."""
        if not self.write_token:
            raise Refusal(403, f"this service is read-only: {', '.join(WRITE_ROUTES)} need it started with "
                               f"SSLFORGE_WRITE_TOKEN set (and the token sent as Authorization: Bearer TOKEN)")
        scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.write_token.encode()):
            raise Refusal(403, "this route changes the index: send the write token as Authorization: Bearer TOKEN")

    def max_body(self, form: Form) -> int:
        files = sum(self.limits.max_images if many else 1 for many in form.files.values())
        values = (len(form.integers) + len(form.numbers)) * (TEXT_BYTES + PART_OVERHEAD)
        return files * (self.limits.max_bytes + PART_OVERHEAD) + values + len(form.texts) * (TEXT_LIMIT + PART_OVERHEAD)

    async def read(self, scope, incoming: Body, form: Form, body) -> FormChecker:
        """The whole body into `body`, checked on the way; Refusal at the first problem."""
        headers = dict(scope["headers"])
        kind, options = parse_options_header(headers.get(b"content-type", b"").decode("latin-1"))
        if kind != b"multipart/form-data":
            raise Refusal(400, f"no image file in the request: send a multipart form with the image as a file "
                               f"({form.example()})")
        if not options.get(b"boundary"):
            raise Refusal(400, "malformed multipart body: its Content-Type has no boundary (let the client set it: "
                               f"{form.example()})")
        limit = self.max_body(form)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise Refusal(413, f"a body of {int(declared):,} bytes is over the limit of {limit:,} for {form.route}",
                          drain=False)
        checker = FormChecker(form, self.limits, body, options[b"boundary"])
        try:
            parser = MultipartParser(options[b"boundary"], checker.callbacks())
        except FormParserError as e:
            raise Refusal(400, f"malformed multipart body ({e}): send the form as curl -F does") from None
        size = 0
        async for chunk in incoming.chunks():  # uvicorn hands the body on in chunks of about 64 KB
            try:
                parser.write(chunk)  # the parts' own limits first: they say more than the body's
            except FormParserError as e:
                raise Refusal(400, f"malformed multipart body ({e}): send the form as curl -F does") from None
            size += len(chunk)
            if size > limit:
                raise Refusal(413, f"the body is over the limit of {limit:,} bytes for {form.route}")
        checker.finish()
        return checker

    async def refuse(self, incoming: Body, send, refusal: Refusal) -> None:
        """Answer {"error": ...}; first read the rest of the body (up to DRAIN_BYTES), so that the client, still
        sending, gets the answer rather than a reset connection; close the connection when it was not all read."""
        drained = refusal.drain and await incoming.drain(DRAIN_BYTES)
        headers = [(b"content-type", b"application/json")] + ([] if drained else [(b"connection", b"close")])
        payload = json.dumps({"error": shown(refusal)}).encode()
        await send({"type": "http.response.start", "status": refusal.status,
                    "headers": headers + [(b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


class Body:
    """The request body as it arrives, read once: `chunks()` stops at its end, `drain()` drops the rest."""

    def __init__(self, receive):
        self.receive, self.more = receive, True

    async def chunks(self):
        """The remaining chunks; Disconnected when the client goes away first."""
        while self.more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise Disconnected
            self.more = message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    async def drain(self, limit: int) -> bool:
        """Read and drop the rest; True when it ended within `limit` bytes."""
        size = 0
        try:
            async for chunk in self.chunks():
                size += len(chunk)
                if size > limit:
                    return False
        except Disconnected:
            return False
        return True


def replay(body, receive):
    """An ASGI receive that hands the checked body on in chunks, then passes through (disconnect notices)."""
    done = False

    async def receive_checked():
        nonlocal done
        if done:
            return await receive()
        chunk = body.read(CHUNK)
        if len(chunk) < CHUNK:
            done = True
        return {"type": "http.request", "body": chunk, "more_body": not done}

    return receive_checked
