"""A hostile-input corpus for the service, generated at test time (nothing large is committed).

    cases = corpus(image=png_bytes(32), max_bytes=MAX_BYTES, max_images=64, trap="http://127.0.0.1:PORT/a.jpg",
                   token=TOKEN, huge=zero_png_6000)

Each Case is one request that a careless or hostile client may send: a file under the wrong field, text (a URL
among it: the service must never fetch one) where a file belongs, broken multipart, too many or too large fields,
parts and bodies, HTTP-level garbage, bad images; text fields nested deep, with numbers of thousands of digits,
huge ids, lone surrogates, control characters (JSON escapes too), oversized labels and paths; many huge images in
one request; bad idempotency keys. The write routes' cases carry the write token (`token`), so that they reach
the field checks. Each names the status it must get; none may get a 500. To add a
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
    headers: tuple = ()                    # extra request headers: (name, value) pairs
    hides: tuple[str, ...] = ()            # strings the answer must not contain (field names, absolute paths)


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


DEEP = "[" * 100_000 + "]" * 100_000
DIGITS = "9" * 5000


def text_cases(image: bytes, token: str, huge: bytes, max_images: int) -> dict[str, Case]:
    """Text fields (no token needed on /search and /duplicates; with the token on /add and /remove), memory and
    idempotency keys."""
    ok, auth = file_part("image", image), (("authorization", f"Bearer {token}"),)
    add, one = (lambda meta, *more: Case(400, "/add", form(file_part("images", image), text_part("meta", meta)),
                                         headers=auth + more)), file_part("images", image)
    cases = {}
    for route in ("/search", "/duplicates"):
        for name, value in (("deep nesting", DEEP), ("a 5,000-digit number", '{"label": ' + DIGITS + "}"),
                            ("a 5,000-digit key", '{"' + DIGITS + '": 1}'), ("a lone surrogate", '{"k\\udcff": 1}')):
            cases[f"{route} where: {name}"] = Case(400, route, form(ok, text_part("where", value)))
        for name, value in (("deep nesting", DEEP), ("5,000 digits", DIGITS)):
            cases[f"{route} path_prefix: {name}"] = Case(400, route, form(ok, text_part("path_prefix", value)))
    cases["unknown field: the answer names no field"] = Case(400, body=form(ok, text_part("where", '{"nope": 1}')),
                                                             hides=("fields:", "class_0"))
    for name, meta in (("deep nesting", DEEP), ("a 5,000-digit number", '{"camera": ' + DIGITS + "}"),
                       ("a lone surrogate in a key", '{"k\\udcff": "v"}'),
                       ("a lone surrogate in a value", '{"k": "\\ud800"}'),
                       ("ESC in the label (JSON escape)", '{"label": "\\u001b[31mRED"}'),
                       ("NUL in the path (JSON escape)", '{"path": "a\\u0000b.jpg"}'),
                       ("a label of 250,000 characters", json.dumps({"label": "x" * 250_000})),
                       ("a path of 2,000 characters", json.dumps({"path": "p" * 2000})),
                       ("a field of 2,000 characters", json.dumps({"k": "v" * 2000}))):
        cases[f"/add meta: {name}"] = add(meta)
    for name, ids in (("deep nesting", DEEP), ("5,000 digits", DIGITS), ("a 20-digit id", "99999999999999999999"),
                      ("a 20-digit id in a list", "[99999999999999999999]"), ("a negative id", "[-5]")):
        cases[f"/remove ids: {name}"] = Case(400, "/remove", form(text_part("ids", ids)), headers=auth)
    for name, key in (("of 300 characters", "k" * 300), ("not ASCII", "cl\xc3\xa9".encode("latin-1"))):
        cases[f"Idempotency-Key {name}"] = Case(400, "/add", form(one), headers=auth + (("idempotency-key", key),))
    cases[f"{max_images} all-zero 6000x6000 PNGs on /embed"] = Case(413, "/embed", form(
        *[file_part("images", huge)] * max_images))
    cases["8 all-zero 6000x6000 PNGs on /embed"] = Case(200, "/embed", form(*[file_part("images", huge)] * 8))
    return cases


def corpus(image: bytes, max_bytes: int, max_images: int, trap: str, token: str, huge: bytes) -> dict[str, Case]:
    """The cases, by name. `image` is a valid upload, `trap` a URL that no request may make the server fetch,
    `token` the server's write token, `huge` an all-zero 6000x6000 PNG."""
    ok = file_part("image", image)
    url = trap.encode()
    return {**text_cases(image, token, huge, max_images),
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


def zero_png(side: int = 6000) -> bytes:
    """An all-zero side x side RGB PNG: about 35 KB that decode to side^2 pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def thin_png(width: int = 200_000) -> bytes:
    """A real width x 1 PNG (a few hundred bytes): preprocessing resizes its short side first."""
    buf = io.BytesIO()
    Image.new("RGB", (width, 1), (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()
