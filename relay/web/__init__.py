"""The building blocks of every HTTP surface (webhooks, the status page, the admin API):
request ids and errors as ErrorResponse, JSON answers, request bodies read within a
budget and a pace."""
