// Swagger UI on the gateway's own document; every file comes from the
// gateway itself (vendored, embedded in the binary), none from a CDN.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  tryItOutEnabled: true,
  // The page's own assets live in the binary; no validator badge (it would
  // call an outside service).
  validatorUrl: null,
});
