//! Request-level tests of the OCI distribution API against the in-process server.

use crate::support::http::{image_manifest, Http};
use crate::support::server::TestServer;
use http::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_round_trip_over_h1_and_h2() {
    let srv = TestServer::start();
    for http in [Http::new(&srv.host()), Http::h2(&srv.host())] {
        let r = http.get("/v2/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        let cfg = http.push_blob("t/rt", b"{}").await;
        let layer = http.push_blob("t/rt", b"layer bytes").await;
        let m = image_manifest((&cfg, 2), &[(&layer, 11)], None);
        let r = http
            .put_manifest(
                "t/rt",
                "v1",
                "application/vnd.oci.image.manifest.v1+json",
                &m,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        let got = http.get("/v2/t/rt/manifests/v1").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body.as_ref(), m.as_slice());
        let b = http.get(&format!("/v2/t/rt/blobs/{layer}")).await;
        assert_eq!(b.body.as_ref(), b"layer bytes");
        let _ = http
            .send(Method::DELETE, "/v2/t/rt/manifests/v1", &[], "")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_expire_and_are_cleaned() {
    let srv = TestServer::start_with(|c| {
        c.storage.upload_expiry = std::time::Duration::from_secs(1);
        c.storage.upload_purge_interval = std::time::Duration::from_millis(200);
    });
    let http = Http::new(&srv.host());
    let r = http
        .send(Method::POST, "/v2/t/up/blobs/uploads/", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").expect("location").to_string();
    let r = http
        .send(Method::PATCH, &loc, &[("content-range", "0-4")], "hello")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let uploads = srv.data_dir().join("uploads");
    assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 1);
    // A session idle past upload_expiry is removed with its data by the periodic purge.
    for _ in 0..100 {
        if http.get(&loc).await.status == StatusCode::NOT_FOUND {
            assert_eq!(http.get(&loc).await.error_code(), "BLOB_UPLOAD_UNKNOWN");
            assert_eq!(std::fs::read_dir(&uploads).expect("uploads").count(), 0);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the abandoned upload was never purged");
}
