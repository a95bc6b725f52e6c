//! `GET /v2/_search` and `agent search`: the seed's filters (name, tag, capability, author,
//! date, size), its result shape, paging, and metadata from annotations and config labels.

use crate::support::http::Http;
use crate::support::server::TestServer;
use http::StatusCode;
use serde_json::{json, Value};

const MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";

/// Pushes `repo:tag` with a `layer_size` layer; metadata in the config labels
/// (`labels`) and in the manifest annotations (`annotations`).
async fn push(
    http: &Http,
    repo: &str,
    tag: &str,
    layer_size: usize,
    labels: Value,
    annotations: Value,
) {
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": { "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": [] },
    }))
    .expect("json");
    let layer = vec![7u8; layer_size];
    let c = http.push_blob(repo, &config).await;
    let l = http.push_blob(repo, &layer).await;
    let mut m = json!({
        "schemaVersion": 2, "mediaType": MEDIA,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l, "size": layer_size }],
    });
    if annotations != Value::Null {
        m["annotations"] = annotations;
    }
    let r = http
        .put_manifest(repo, tag, MEDIA, &serde_json::to_vec(&m).expect("json"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

async fn search(http: &Http, query: &str) -> Value {
    let r = http.get(&format!("/v2/_search?{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {:?}", r.body);
    r.json()
}

fn names(v: &Value) -> Vec<String> {
    v["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["name"].as_str().unwrap_or(""),
                i["tag"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_by_name_tag_capability_author_date_and_size() {
    let srv = TestServer::start();
    let http = Http::new(&srv.host());
    push(
        &http,
        "agents/writer-bot",
        "latest",
        300_000,
        json!({ "ai.agent.capabilities": "text-generation, chat", "org.opencontainers.image.authors": "ai-team" }),
        json!({ "org.opencontainers.image.description": "Advanced text generation agent", "org.opencontainers.image.created": "2026-03-01T00:00:00Z" }),
    )
    .await;
    push(
        &http,
        "agents/writer-bot",
        "v1.0.0",
        300_000,
        json!({ "ai.agent.capabilities": "text-generation" }),
        Value::Null,
    )
    .await;
    push(
        &http,
        "agents/vision",
        "v2",
        2_000_000,
        json!({ "ai.agent.capabilities": "image-recognition", "org.opencontainers.image.authors": "vision-lab", "org.opencontainers.image.description": "Sees things" }),
        Value::Null,
    )
    .await;
    let all = search(&http, "").await;
    assert_eq!(all["total"], 3);
    assert_eq!(all["page"], 1);
    assert_eq!(all["per_page"], 10);
    // The seed's result shape.
    let first = &all["images"][0];
    for key in [
        "name",
        "tag",
        "description",
        "author",
        "capabilities",
        "size",
        "created",
        "downloads",
        "rating",
    ] {
        assert!(first.get(key).is_some(), "{key} missing in {first}");
    }
    let bot = all["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|i| i["name"] == "agents/writer-bot" && i["tag"] == "latest")
        .expect("writer-bot:latest");
    assert_eq!(bot["description"], "Advanced text generation agent");
    assert_eq!(bot["author"], "ai-team");
    assert_eq!(bot["capabilities"], json!(["text-generation", "chat"]));
    assert_eq!(
        bot["created"], "2026-03-01T00:00:00Z",
        "the annotation wins over the config"
    );
    assert!(bot["size"].as_str().expect("size").ends_with("KB"), "{bot}");
    assert_eq!(
        names(&search(&http, "q=vision").await),
        ["agents/vision:v2"]
    );
    assert_eq!(
        names(&search(&http, "q=generation").await).len(),
        1,
        "description matches"
    );
    assert_eq!(
        names(&search(&http, "tag=v1.0.0").await),
        ["agents/writer-bot:v1.0.0"]
    );
    assert_eq!(
        names(&search(&http, "capability=text-generation").await),
        ["agents/writer-bot:latest", "agents/writer-bot:v1.0.0"]
    );
    assert_eq!(
        names(&search(&http, "author=AI-TEAM").await),
        ["agents/writer-bot:latest"]
    );
    assert_eq!(
        names(&search(&http, "since=2026-02-01").await),
        ["agents/writer-bot:latest"]
    );
    assert_eq!(names(&search(&http, "until=2026-01-31").await).len(), 2);
    assert_eq!(
        names(&search(&http, "min_size=1MB").await),
        ["agents/vision:v2"]
    );
    assert_eq!(names(&search(&http, "max_size=1MB").await).len(), 2);
    let page2 = search(&http, "per_page=2&page=2").await;
    assert_eq!((page2["total"].as_u64(), names(&page2).len()), (Some(3), 1));
    let r = http.get("/v2/_search?min_size=huge").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Downloads count successful manifest pulls.
    for _ in 0..3 {
        let r = http.get("/v2/agents/vision/manifests/v2").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = search(&http, "q=vision").await;
        if v["images"][0]["downloads"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The CLI.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .args([
            "search",
            "--capability",
            "image-recognition",
            "--registry",
            &srv.url(""),
        ])
        .env_remove("AGENT_REGISTRY_TOKEN")
        .env("AGENT_CONFIG_DIR", srv.root())
        .output()
        .expect("agent search");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        text.contains("agents/vision")
            && text.contains("vision-lab")
            && !text.contains("writer-bot"),
        "{text}"
    );
}
