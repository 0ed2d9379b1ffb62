"""The lab's own Kubernetes API server: a test fixture and a user's sandbox, never production.

No kube-apiserver can run on the lab's machines, so the lab serves the API
itself, close enough to the real one that kubectl, client-go and the Python
clients cannot tell: discovery, OpenAPI, CRUD with resourceVersions and
optimistic concurrency, every patch type kubectl sends, server-side apply,
watches with bookmarks and 410s, Tables, TokenReview, RBAC, CRDs with
schema validation, and an EndpointSlice controller.

Layout: `core` handles requests sans-IO over `store` (versions, history,
snapshots), `schema` (validation, pruning, defaults), `patch` and `fields`
(patches, managed fields, apply), `selectors`, `tables`, `discovery`,
`auth`, `controllers`, `objects` (per-kind rules) and `persist` (the state
file); `server` is the HTTPS layer (aiohttp), `tls` the CA and kubeconfigs,
`launch` the command line and what `lab up` calls.
"""
