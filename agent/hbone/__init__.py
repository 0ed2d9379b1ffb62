"""HBONE: TCP streams carried as HTTP/2 CONNECT over mutual TLS 1.3, between agents on :15008."""
