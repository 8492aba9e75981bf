// Swagger UI (served from the swagger-ui-bundle package under docs/static/) over this
// server's OpenAPI document. The bundle's own start-up script points at a demo API.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
