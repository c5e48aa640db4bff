//! The status page at `/`, in the spirit of HAProxy's stats page: models, providers and their
//! instances with health, circuit state, load, and live request and error rates.
//!
//! The tables are rendered here from the same data `/admin/status` serves, each value in an
//! element naming its place in that data (`data-k="providers.0.instances.1.circuit"`); the
//! page's inline script fetches `/admin/status` every 2 s and rewrites those values in place,
//! turning counters (`data-rate`) into rates. No external asset: it works on an offline host.

use serde_json::Value;

const TEMPLATE: &str = include_str!("status.html");

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value as the page shows it (the script's `show` does the same).
fn show(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// An element showing the value at `path` of the status data, refreshed by the script.
fn live(status: &Value, path: &str) -> String {
    let v = status.pointer(&format!("/{}", path.replace('.', "/")));
    let v = v.unwrap_or(&Value::Null);
    let class = match v {
        Value::Bool(b) => format!(" class=\"v-{b}\""),
        Value::String(s) if matches!(s.as_str(), "open" | "closed" | "half_open") => {
            format!(" class=\"v-{s}\"")
        }
        _ => String::new(),
    };
    format!(
        "<span data-k=\"{}\"{class}>{}</span>",
        esc(path),
        esc(&show(v))
    )
}

/// A rate computed by the script from the counter at `path` (blank until its second fetch).
fn rate(path: &str) -> String {
    format!("<span data-rate=\"{}\"></span>", esc(path))
}

fn text(v: &Value) -> String {
    esc(&show(v))
}

pub fn render(status: &Value) -> Vec<u8> {
    let mut body = String::new();
    body.push_str(
        "<h2>Models</h2>\n<table>\n<tr><th>model</th><th>provider</th><th>upstream model</th>\
         <th>fallbacks</th><th>usable instances</th><th>instances</th></tr>\n",
    );
    let empty = Vec::new();
    let models = status["models"].as_array().unwrap_or(&empty);
    for (i, m) in models.iter().enumerate() {
        let fallbacks = m["fallbacks"]
            .as_array()
            .map(|f| f.iter().map(show).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        body.push_str(&format!(
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td>{}</td><td>{}</td></tr>\n",
            text(&m["name"]),
            text(&m["provider"]),
            text(&m["upstream_model"]),
            esc(&fallbacks),
            live(status, &format!("models.{i}.usable_instances")),
            live(status, &format!("models.{i}.instances")),
        ));
    }
    if models.is_empty() {
        body.push_str("<tr><td colspan=\"6\">no model configured</td></tr>\n");
    }
    body.push_str("</table>\n");

    body.push_str(
        "<h2>Providers and instances</h2>\n<table>\n<tr><th>provider / instance</th>\
         <th>endpoint</th><th>weight</th><th>healthy</th><th>circuit</th><th>in flight</th>\
         <th>attempts/s</th><th>failures/s</th><th>attempts</th><th>failures</th>\
         <th>recent error rate</th><th>latency ms</th></tr>\n",
    );
    let providers = status["providers"].as_array().unwrap_or(&empty);
    for (p, provider) in providers.iter().enumerate() {
        let at = |field: &str| format!("providers.{p}.{field}");
        body.push_str(&format!(
            "<tr class=\"provider\"><td>{} ({}, {})</td><td class=\"l\">models: {}</td><td></td>\
             <td>{} usable</td><td></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td></td><td></td></tr>\n",
            text(&provider["name"]),
            text(&provider["kind"]),
            text(&provider["balance"]),
            esc(&provider["models"]
                .as_array()
                .map(|m| m.iter().map(show).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()),
            live(status, &at("usable_instances")),
            live(status, &at("in_flight")),
            rate(&at("attempts")),
            rate(&at("failures")),
            live(status, &at("attempts")),
            live(status, &at("failures")),
        ));
        let instances = provider["instances"].as_array().unwrap_or(&empty);
        for (i, instance) in instances.iter().enumerate() {
            let at = |field: &str| format!("providers.{p}.instances.{i}.{field}");
            body.push_str(&format!(
                "<tr><td>{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                text(&instance["address"]),
                text(&instance["endpoint"]),
                text(&instance["weight"]),
                live(status, &at("healthy")),
                live(status, &at("circuit")),
                live(status, &at("in_flight")),
                rate(&at("attempts")),
                rate(&at("failures")),
                live(status, &at("attempts")),
                live(status, &at("failures")),
                live(status, &at("recent_error_rate")),
                live(status, &at("latency_ms")),
            ));
        }
        if instances.is_empty() {
            body.push_str("<tr><td colspan=\"12\">no resolved instance</td></tr>\n");
        }
    }
    body.push_str("</table>\n");
    if let Some(last) = status["last_reload"].as_object() {
        body.push_str(&format!(
            "<h2>Last reload</h2>\n<p>{} by {}{}{}</p>\n",
            text(&last["status"]),
            text(&last["trigger"]),
            last["error"]
                .as_str()
                .map(|e| format!(": {}", esc(e)))
                .unwrap_or_default(),
            last["restart_required"]
                .as_array()
                .filter(|r| !r.is_empty())
                .map(|r| format!(
                    "; waiting for a restart: {}",
                    esc(&r.iter().map(show).collect::<Vec<_>>().join(", "))
                ))
                .unwrap_or_default(),
        ));
    }
    TEMPLATE
        .replace("{{BODY}}", &body)
        .replace("{{READY}}", &live(status, "ready"))
        .replace("{{READY_REASON}}", &text(&status["ready_reason"]))
        .replace("{{UPTIME}}", &text(&status["uptime_seconds"]))
        .replace("{{GENERATION}}", &text(&status["generation"]))
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        let status = serde_json::json!({
            "generation": 0, "ready": true, "ready_reason": null, "uptime_seconds": 1,
            "models": [{"name": "<script>x</script>", "provider": "p", "upstream_model": "m",
                        "fallbacks": [], "instances": 1, "usable_instances": 1}],
            "providers": [],
        });
        let html = String::from_utf8(render(&status)).unwrap();
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
        assert!(!html.contains("<script>x"));
    }
}
