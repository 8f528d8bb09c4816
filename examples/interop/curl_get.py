#!/usr/bin/env python3
"""HTTP/3 requests with libcurl (curl_cffi), for interop tests against quic-xdp.

usage: curl_get.py HOST PORT CA_PEM METHOD:PATH...

Sends every request in order over one HTTP/3-only session (libcurl keeps
the connection open between them), trusting CA_PEM for the name
"localhost", which is resolved to HOST. Prints a JSON report: for each
request its status, body length, body sha256 and error (if any), and how
many connections libcurl opened.
"""
import hashlib
import json
import sys

from curl_cffi import CurlHttpVersion, CurlOpt, requests


def main():
    host, port, ca = sys.argv[1], sys.argv[2], sys.argv[3]
    session = requests.Session(
        curl_options={CurlOpt.RESOLVE: [f"localhost:{port}:{host}"]},
    )
    results = []
    for spec in sys.argv[4:]:
        method, path = spec.split(":", 1)
        entry = {"method": method, "path": path}
        try:
            r = session.request(
                method,
                f"https://localhost:{port}{path}",
                verify=ca,
                http_version=CurlHttpVersion.V3ONLY,
                timeout=30,
            )
            entry.update(
                status=r.status_code,
                length=len(r.content),
                sha256=hashlib.sha256(r.content).hexdigest(),
                http_version=r.http_version,
                content_length=r.headers.get("content-length"),
                content_type=r.headers.get("content-type"),
                allow=r.headers.get("allow"),
            )
        except Exception as e:  # reported, the test decides
            entry["error"] = str(e)
        results.append(entry)
    print(json.dumps({"responses": results}))


if __name__ == "__main__":
    main()
