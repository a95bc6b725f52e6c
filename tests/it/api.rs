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
