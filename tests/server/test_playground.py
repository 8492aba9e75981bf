"""The playground (GET /), the API docs (GET /docs) and the limits the OpenAPI document states,
over real HTTP (what a browser makes of them: tests/server/test_browser.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import tomllib

from server.apidocs import SWAGGER
from server.playground import STATIC, STATIC_DIR

REPO = Path(__file__).resolve().parents[2]
MIME = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


class References(HTMLParser):
    """The URLs a page loads by itself (scripts, styles, icons) and the ones it links to."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.assets.append(a["src"])
        elif tag == "link" and a.get("href") and not a["href"].startswith("data:"):
            self.assets.append(a["href"])
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])


def references(html: str) -> References:
    parser = References()
    parser.feed(html)
    return parser


def resolve(page: str, ref: str) -> str:
    """The path `ref` leads to from the page at path `page`, as a browser resolves it."""
    assert not ref.startswith(("http:", "https:", "//")), f"{ref}: no CDN, every asset is served here"
    return urlsplit(urljoin("http://server" + page, ref)).path


def served_file(path: str) -> Path:
    """The file on disk a static URL path must serve."""
    if path.startswith("/docs/static/"):
        return SWAGGER.files[path.removeprefix("/docs/static/")]
    return STATIC.files[path.removeprefix("/static/")]


async def check_page(client, page: str, own_file: str) -> References:
    resp = await client.get(page)
    assert resp.status == 200 and resp.content_type == "text/html" and resp.charset == "utf-8"
    html = await resp.text()
    assert html == (STATIC_DIR / own_file).read_text()
    refs = references(html)
    assert refs.assets
    for ref in refs.assets:
        path = resolve(page, ref)
        asset = await client.get(path)
        assert asset.status == 200, (page, ref, path)
        assert asset.content_type == MIME[Path(path).suffix], (path, asset.content_type)
        assert await asset.read() == served_file(path).read_bytes(), path
        assert "X-Request-ID" in asset.headers and asset.headers["Cache-Control"] == "no-cache"
    return refs


async def test_the_playground_and_every_asset_it_references_load(serve_fake):
    client = await serve_fake()
    refs = await check_page(client, "/", "index.html")
    assert {resolve("/", r) for r in refs.assets} >= {"/static/playground.js", "/static/playground.css"}
    # Its links lead to this server's docs, document and metrics.
    for link in refs.links:
        assert (await client.get(resolve("/", link))).status == 200, link
    assert {resolve("/", r) for r in refs.links} == {"/docs", "/openapi.json", "/metrics"}
    # The script calls the API with the page-relative paths the server routes.
    script = (STATIC_DIR / "playground.js").read_text()
    for call in ('fetch("v1/predict"', 'fetch("v1/model")', 'fetch("v1/stats")'):
        assert call in script


async def test_the_api_docs_and_swagger_ui_assets_load(serve_fake):
    client = await serve_fake()
    refs = await check_page(client, "/docs", "docs.html")
    assets = {resolve("/docs", r) for r in refs.assets}
    assert {"/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/static/docs.js"} <= assets
    # Swagger UI starts on this server's document (the bundle's own start-up points at a demo API).
    assert 'url: "openapi.json"' in (STATIC_DIR / "docs.js").read_text()
    assert "SwaggerUIBundle" in (await (await client.get("/docs/static/swagger-ui-bundle.js")).text())[:200_000]
    for link in refs.links:
        assert (await client.get(resolve("/docs", link))).status == 200, link


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/%2e%2e%2fapp.py",  # ../app.py: a name outside the set never reaches the file system
        "/static/..%2F..%2Fpyproject.toml",
        "/docs/static/index.html",  # the bundle's own page (a demo API's) is not served
        "/docs/static/swagger-ui-bundle.js.map",
    ],
)
async def test_only_the_shipped_files_are_served(serve_fake, path):
    client = await serve_fake()
    resp = await client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


def test_the_static_files_ship_in_the_package_and_the_images():
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["server"]
    on_disk = {p.name for p in STATIC_DIR.iterdir() if p.is_file()}
    assert on_disk == set(STATIC.files), "every file in server/static/ is served, and only those"
    for name in on_disk:
        assert any(Path("static", name).match(pattern) for pattern in patterns), name
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu"):
        assert "COPY server/ server/" in (REPO / dockerfile).read_text(), dockerfile
    # swagger-ui-bundle is a server dependency, pinned for the images.
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("swagger-ui-bundle") for d in dependencies)
    pins = (REPO / "deploy" / "constraints-serve.txt").read_text().splitlines()
    assert any(line.startswith("swagger-ui-bundle==") for line in pins)


async def test_the_openapi_document_states_the_running_limits(serve_fake):
    client = await serve_fake(max_text_chars=40, max_texts_per_request=3, max_body_bytes=4096)
    spec = await (await client.get("/openapi.json")).json()
    text = spec["components"]["schemas"]["Text"]
    texts = spec["components"]["schemas"]["BatchRequest"]["properties"]["texts"]
    assert (text["minLength"], text["maxLength"], texts["minItems"], texts["maxItems"]) == (1, 40, 1, 3)
    assert "at most 40 characters" in text["description"] and "1 to 3 texts" in texts["description"]
    assert "at most 4096 bytes" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["description"]
    pattern = re.compile(text["pattern"])

    async def answer(body: dict) -> tuple[int, str | None]:
        resp = await client.post("/v1/predict", json=body)
        return resp.status, None if resp.status == 200 else (await resp.json())["error"]["code"]

    # The server refuses exactly what the document says it refuses.
    assert await answer({"text": "x" * 40}) == (200, None)
    assert await answer({"text": "x" * 41}) == (422, "text_too_long")
    assert await answer({"texts": ["a", "b", "c"]}) == (200, None)
    assert await answer({"texts": ["a", "b", "c", "d"]}) == (422, "too_many_texts")
    for blank in ("", " ", " \t\n "):
        assert await answer({"text": blank}) == (422, "empty_text")
        assert not pattern.search(blank)
    assert pattern.search(" ok ")


async def test_the_openapi_document_says_when_predictions_need_a_key(serve_fake, tmp_path):
    open_spec = await (await (await serve_fake()).get("/openapi.json")).json()
    assert "security" not in open_spec["paths"]["/v1/predict"]["post"]
    assert "401" not in open_spec["paths"]["/v1/predict"]["post"]["responses"]
    (tmp_path / "keys").write_text("a-key\n")
    client = await serve_fake(api_key_file=tmp_path / "keys")
    spec = await (await client.get("/openapi.json")).json()
    predict = spec["paths"]["/v1/predict"]["post"]
    scheme = next(iter(spec["components"]["securitySchemes"]))
    assert predict["security"] == [{scheme: []}]
    assert spec["components"]["securitySchemes"][scheme] == {"type": "http", "scheme": "bearer"}
    refused = await client.post("/v1/predict", json={"text": "fine"})
    assert refused.status == 401 and "401" in predict["responses"]
    assert (await refused.json())["error"]["code"] in predict["responses"]["401"]["description"]
    # Only predictions: every other operation is open, as the server is.
    guarded = {path for path, ops in spec["paths"].items() for op in ops.values() if "security" in op}
    assert guarded == {"/v1/predict"}
    assert (await client.get("/v1/stats")).status == 200 and (await client.get("/")).status == 200
