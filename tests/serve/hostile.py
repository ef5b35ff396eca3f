"""A hostile-input corpus for the service, generated at test time (nothing large is committed).

    cases = corpus(image=png_bytes(32), max_bytes=MAX_BYTES, max_images=64, trap="http://127.0.0.1:PORT/a.jpg")

Each Case is one request that a careless or hostile client may send: a file under the wrong field, text (a URL
among it: the service must never fetch one) where a file belongs, broken multipart, too many or too large fields,
parts and bodies, HTTP-level garbage, bad images. Each names the status it must get; none may get a 500. To add a
case, add an entry to `corpus`.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from urllib.parse import quote

from PIL import Image
from serve_helpers import png_bytes, png_header

BOUNDARY = b"sslforge-hostile-corpus"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


@dataclass(frozen=True)
class Case:
    status: int                            # what the server must answer
    route: str = "/search"
    body: bytes = b""
    content_type: str | None = MULTIPART
    method: str = "POST"
    raw: bytes | None = None               # sent as is on a fresh connection (HTTP-level cases): route, body unused
    chunked: bool = False                  # sent without a Content-Length (so the server sees what is inside)
    json_error: bool = True                # the answer is {"error": "<one line>"} (not for uvicorn's or routing's own)


def part(headers: bytes, value: bytes = b"", boundary: bytes = BOUNDARY) -> bytes:
    return b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"


def file_part(name: bytes | str, data: bytes, filename: bytes | str = b"a.png") -> bytes:
    name, filename = (v.encode() if isinstance(v, str) else v for v in (name, filename))
    return part(b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
                b"Content-Type: image/png", data)


def text_part(name: bytes | str, value: bytes | str) -> bytes:
    name, value = (v.encode() if isinstance(v, str) else v for v in (name, value))
    return part(b'Content-Disposition: form-data; name="' + name + b'"', value)


def form(*parts: bytes, boundary: bytes = BOUNDARY) -> bytes:
    return b"".join(parts) + b"--" + boundary + b"--\r\n"


def raw_request(head: bytes, body: bytes = b"") -> bytes:
    return head.replace(b"\n", b"\r\n") + b"\r\n" + body


def corpus(image: bytes, max_bytes: int, max_images: int, trap: str) -> dict[str, Case]:
    """The cases, by name. `image` is a valid upload, `trap` a URL that no request may make the server fetch."""
    ok = file_part("image", image)
    url = trap.encode()
    return {
        # the file under another name, or not a file at all
        "file under a wrong field name": Case(400, body=form(file_part("file", image))),
        "file under /embed's field name": Case(400, body=form(file_part("images", image))),
        "/embed file under /search's field name": Case(400, "/embed", form(file_part("image", image))),
        "text value in the file field": Case(400, body=form(text_part("image", "hello"))),
        "URL in the file field": Case(400, body=form(text_part("image", url))),
        "URL in /embed's file field": Case(400, "/embed", form(text_part("images", url))),
        "quoted URL in the file field": Case(400, body=form(text_part("image", b'"' + url + b'"'))),
        "k sent as a file": Case(400, body=form(ok, file_part("k", b"3", "k.txt"))),
        "k given twice": Case(400, body=form(ok, text_part("k", "3"), text_part("k", "4"))),
        "k not an integer": Case(400, body=form(ok, text_part("k", "three"))),
        "k a JSON object": Case(400, body=form(ok, text_part("k", '{"k": 3}'))),
        "k of 50 digits": Case(422, body=form(ok, text_part("k", "9" * 50))),
        "two files on /search": Case(400, body=form(ok, ok)),
        "no image field": Case(400, body=form(text_part("k", "3"))),
        "empty multipart body": Case(400, body=form()),
        # not multipart
        "form-urlencoded body": Case(400, body=b"image=a.jpg&k=3", content_type="application/x-www-form-urlencoded"),
        "form-urlencoded URL": Case(400, body=b"image=" + quote(trap, safe="").encode(),
                                    content_type="application/x-www-form-urlencoded"),
        "JSON body with a URL": Case(400, body=json.dumps({"image": trap}).encode(), content_type="application/json"),
        "deeply nested JSON": Case(400, body=b"[" * 100_000, content_type="application/json"),
        "plain-text body": Case(400, body=b"hello", content_type="text/plain"),
        "image bytes without a content type": Case(400, body=image, content_type=None),
        # broken multipart
        "multipart without a boundary": Case(400, body=form(ok), content_type="multipart/form-data"),
        "mismatched boundary": Case(400, body=form(ok), content_type="multipart/form-data; boundary=another-one"),
        "boundary of 300 characters": Case(400, body=form(ok, boundary=b"b" * 300),
                                           content_type="multipart/form-data; boundary=" + "b" * 300),
        "no closing boundary": Case(400, body=ok),
        "garbage after the boundary line": Case(400, body=b"--" + BOUNDARY + b"\r\n\x00\xff garbage"),
        "part without a field name": Case(400, body=form(part(b'Content-Disposition: form-data; filename="a.png"',
                                                               image))),
        "part without Content-Disposition": Case(400, body=form(part(b"Content-Type: image/png", image))),
        "NUL in a part header value": Case(400, body=form(file_part("image", image, b"a\x00.png"))),
        "NUL in a part header name": Case(400, body=form(part(b'Content-Dis\x00position: form-data; name="image"; '
                                                               b'filename="a.png"', image))),
        "control character in a field name": Case(400, body=form(file_part(b"im\x01age", image))),
        "non-UTF-8 field name": Case(400, body=form(file_part(b"\xff\xfe", image))),
        "filename of 1,000 characters": Case(400, body=form(file_part("image", image, "a" * 1000 + ".png"))),
        "non-UTF-8 filename": Case(200, body=form(file_part("image", image, b"\xff\xfe.png"))),
        "9 headers in a part": Case(400, body=form(part(b"\r\n".join(b"X-%d: y" % i for i in range(9)) +
                                                         b'\r\nContent-Disposition: form-data; name="image"; '
                                                         b'filename="a.png"', image))),
        # too many or too large
        "1,001 text fields": Case(400, body=form(ok, *[text_part("k", "3")] * 1001)),
        "1,001 unknown fields": Case(400, body=form(*(text_part(f"f{i}", "x") for i in range(1001)), ok)),
        "50,000 fields": Case(400, body=form(*[text_part("k", "3")] * 50_000), chunked=True),
        "1,001 files on /embed": Case(413, "/embed", form(*[file_part("images", image)] * 1001)),
        f"{max_images + 1} images on /embed": Case(413, "/embed", form(*[file_part("images", image)] *
                                                                         (max_images + 1))),
        "30 MB text field": Case(413, body=form(ok, text_part("k", b"1" * 30_000_000)), chunked=True),
        "30 MB text field, length declared": Case(413, body=form(ok, text_part("k", b"1" * 30_000_000))),
        "30 MB unknown text field": Case(400, body=form(text_part("note", b"1" * 30_000_000), ok), chunked=True),
        "file over the byte limit": Case(413, body=form(file_part("image", image + b"\0" * max_bytes)), chunked=True),
        "body declared far over the limit": Case(413, raw=raw_request(
            b"POST /search HTTP/1.1\nHost: x\nContent-Type: " + MULTIPART.encode() + b"\nContent-Length: "
            b"1000000000000\n", form(ok)[:100])),
        # bad images (the engine's checks, through the server)
        "empty file": Case(400, body=form(file_part("image", b""))),
        "not an image": Case(415, body=form(file_part("image", b"hello, not an image"))),
        "truncated image": Case(400, body=form(file_part("image", png_bytes(64)[:150]))),
        "too many pixels": Case(413, body=form(file_part("image", png_header(8000, 8000)))),
        "decompression bomb": Case(413, body=form(file_part("image", png_header(30000, 30000)))),
        # a tiny 200000x1 PNG: preprocessing bounds the work by the size after resizing, so it is answered cheaply
        "thin image 200000x1": Case(200, body=form(file_part("image", thin_png()))),
        # routing and HTTP-level garbage (answered by BentoML's router and uvicorn, as plain text)
        "GET on an endpoint": Case(405, method="GET", content_type=None, json_error=False),
        "unknown endpoint": Case(404, "/nope", body=form(ok), json_error=False),
        "NUL in an HTTP header": Case(400, raw=raw_request(b"POST /search HTTP/1.1\nHost: x\nX-A: a\x00b\n"
                                                           b"Content-Length: 0\n"), json_error=False),
        "garbage request line": Case(400, raw=raw_request(b"GARBAGE\n"), json_error=False),
        "header of 1 MB": Case(400, raw=raw_request(b"GET /livez HTTP/1.1\nHost: x\nX-Big: " + b"a" * 2**20 +
                                                      b"\n"), json_error=False),
        "Content-Length not a number": Case(400, raw=raw_request(b"POST /search HTTP/1.1\nHost: x\n"
                                                                 b"Content-Length: ten\n"), json_error=False),
    }


def thin_png(width: int = 200_000) -> bytes:
    """A real width x 1 PNG (a few hundred bytes): preprocessing resizes its short side first."""
    buf = io.BytesIO()
    Image.new("RGB", (width, 1), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()
