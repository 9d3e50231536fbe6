//! The route table of the REST API and the OpenAPI 3 document generated from it
//! (`GET /1.0/openapi.json`). The daemon's router is checked against this table by a
//! system test: every route listed here answers (not 404/405) on a real daemon.

use serde_json::{json, Map, Value};

/// One route of the API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// The request body's type in `api::types` ("" when there is none).
    pub request: &'static str,
    /// The success body's type ("" for none; "stream" for upgraded or streamed bodies).
    pub response: &'static str,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: &'static str,
    response: &'static str,
) -> Route {
    Route {
        method,
        path,
        summary,
        request,
        response,
    }
}

/// Every route the daemon serves.
pub const ROUTES: &[Route] = &[
    r("GET", "/1.0", "Server information", "", "ServerInfo"),
    r("GET", "/1.0/openapi.json", "This document", "", "OpenAPI"),
    r("GET", "/1.0/instances", "Instance names, or full instances with ?recursion=1 (answered from the daemon's state, never from monitors)", "", "Instance[]"),
    r("POST", "/1.0/instances", "Create an instance (and start it with start=true); returns an operation", "InstancesPost", "Operation"),
    r("GET", "/1.0/instances/{name}", "One instance; the ETag header identifies its configuration", "", "Instance"),
    r("PUT", "/1.0/instances/{name}", "Replace configuration and description (If-Match honoured)", "InstancePut", "Instance"),
    r("PATCH", "/1.0/instances/{name}", "Merge configuration keys; null removes a key (If-Match honoured)", "InstancePatch", "Instance"),
    r("POST", "/1.0/instances/{name}", "Rename a stopped instance", "InstanceRename", "Instance"),
    r("DELETE", "/1.0/instances/{name}", "Delete a stopped instance (?force=1 stops it first); returns an operation", "", "Operation"),
    r("GET", "/1.0/instances/{name}/state", "Live status and resource use", "", "InstanceState"),
    r("PUT", "/1.0/instances/{name}/state", "Start, stop, restart, freeze or unfreeze; returns an operation", "StatePut", "Operation"),
    r("POST", "/1.0/instances/{name}/exec", "Run a command (HTTP upgrade to a framed stream: ExecPost first, then stdin/stdout/stderr/exit frames)", "ExecPost", "stream"),
    r("GET", "/1.0/instances/{name}/console", "Attach to the console (HTTP upgrade to a framed stream)", "", "stream"),
    r("GET", "/1.0/instances/{name}/logs", "The console log (?follow=1 streams, ?since=RFC3339 or seconds)", "", "stream"),
    r("GET", "/1.0/instances/{name}/snapshots", "Snapshots of an instance", "", "Snapshot[]"),
    r("POST", "/1.0/instances/{name}/snapshots", "Take a snapshot; returns an operation", "SnapshotPost", "Operation"),
    r("POST", "/1.0/instances/{name}/snapshots/{snapshot}/restore", "Restore a snapshot into a stopped instance; returns an operation", "", "Operation"),
    r("DELETE", "/1.0/instances/{name}/snapshots/{snapshot}", "Delete a snapshot", "", ""),
    r("GET", "/1.0/operations", "Operations the daemon knows", "", "Operation[]"),
    r("GET", "/1.0/operations/{id}", "One operation", "", "Operation"),
    r("GET", "/1.0/operations/{id}/wait", "Wait for an operation to end (?timeout=seconds)", "", "Operation"),
    r("DELETE", "/1.0/operations/{id}", "Cancel an operation", "", ""),
    r("GET", "/1.0/events", "Lifecycle and operation events, one JSON object per line", "", "stream"),
    r("GET", "/1.0/metrics", "Prometheus text: CPU, memory, processes, network and block I/O per instance", "", "text"),
];

/// The OpenAPI 3.0 document of [`ROUTES`].
pub fn document(version: &str) -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        let mut op = json!({
            "summary": route.summary,
            "responses": {
                "default": {"description": "ErrorBody", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            }
        });
        let ok = match route.response {
            "" => json!({"description": "empty"}),
            "stream" | "text" => json!({"description": route.response}),
            t => {
                json!({"description": t, "content": {"application/json": {"schema": schema_ref(t)}}})
            }
        };
        op["responses"]["200"] = ok;
        if !route.request.is_empty() {
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": schema_ref(route.request)}}});
        }
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        entry[route.method.to_ascii_lowercase()] = op;
    }
    let mut schemas = Map::new();
    for route in ROUTES {
        for t in [route.request, route.response] {
            let t = t.trim_end_matches("[]");
            if !t.is_empty() && !matches!(t, "stream" | "text" | "OpenAPI") {
                schemas.insert(
                    t.to_string(),
                    json!({"type": "object", "description": format!("api::types::{t}")}),
                );
            }
        }
    }
    schemas.insert("ErrorBody".into(), json!({"type": "object", "properties": {"error": {"type": "string"}, "code": {"type": "integer"}}}));
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Bulkhead API", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn schema_ref(t: &str) -> Value {
    match t.strip_suffix("[]") {
        Some(inner) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{inner}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{t}")}),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_lists_every_route_once() {
        let doc = super::document("test");
        let n: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_object().unwrap().len())
            .sum();
        assert_eq!(n, super::ROUTES.len());
        assert!(doc["paths"]["/1.0/instances/{name}"]["patch"]["requestBody"].is_object());
    }
}
