#!/bin/sh
# The demo's visitor: calls the edge gateway every few seconds and prints what came back.
G=http://gateway.edge:8080
show='%{http_code} ratelimit-remaining=%header{ratelimit-remaining} x-cache-status=%header{x-cache-status}\n'
until [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' $G/)" != 000 ]; do sleep 0.5; done
while true; do
  echo "GET /api/checkout, no API key -> $(curl -s -m 5 -o /dev/null -w "$show" $G/api/checkout)"
  for i in 1 2 3 4 5 6; do
    echo "GET /api/checkout, key of demo-user -> $(curl -s -m 5 -o /dev/null -w "$show" -H 'apikey: demo-key-0001' $G/api/checkout)"
  done
  for i in 1 2; do
    echo "GET /catalog -> $(curl -s -m 5 -o /dev/null -w "$show" $G/catalog)"
  done
  sleep 8
done
