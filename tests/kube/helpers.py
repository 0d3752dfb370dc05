"""Small helpers of the real API tier: raw GETs (OpenAPI, Table output), Table rows as dicts."""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client

__all__ = ["TABLE", "get_json", "table", "table_rows"]

# What kubectl sends for `kubectl get`: the API server renders the CRD's printer columns.
TABLE = "application/json;as=Table;g=meta.k8s.io;v=v1"


def get_json(client: kubernetes.client.ApiClient, path: str, accept: str = "application/json") -> dict[str, Any]:
    response = client.call_api(path, "GET", header_params={"Accept": accept}, auth_settings=["BearerToken"],
                               _preload_content=False, _return_http_data_only=True)
    return json.loads(response.data)


def table(client: kubernetes.client.ApiClient, path: str) -> dict[str, Any]:
    """``kubectl get`` of ``path`` (a list or one object) as the API server's Table."""
    document = get_json(client, path, TABLE)
    assert document.get("kind") == "Table", document
    return document


def table_rows(document: dict[str, Any], *, wide: bool = False) -> list[dict[str, Any]]:
    """Each row as {column name: cell}; priority-1 columns only when ``wide`` (as ``kubectl get -o wide``)."""
    columns = document["columnDefinitions"]
    rows = []
    for row in document["rows"]:
        rows.append({column["name"]: cell for column, cell in zip(columns, row["cells"], strict=True)
                     if wide or column.get("priority", 0) == 0})
    return rows
