//! Fetching a registry token: `GET realm?service=..&scope=..`, with basic credentials
//! when configured (never over plain http to an https upstream's realm), reading
//! `token` or `access_token` and `expires_in` (60 s when absent).

use super::auth::{Granted, TokenRequest};
use super::body::read_small;
use super::error::UpstreamError;
use super::Upstream;
use http::{header, Method, StatusCode};
use serde::Deserialize;
use std::time::Duration;

/// Largest token response read.
const TOKEN_REPLY_LIMIT: usize = 1 << 20;

/// Token lifetime when the service does not say (the distribution token spec's default).
const DEFAULT_EXPIRES_IN: u64 = 60;

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Upstream {
    pub(super) async fn fetch_token(&self, req: &TokenRequest) -> Result<Granted, UpstreamError> {
        // The realm without its query: enough to name it, and nothing of ours in it.
        let realm_shown = req.realm.split('?').next().unwrap_or_default();
        let what = format!("token GET {realm_shown}");
        let fail = |problem: String| UpstreamError::Auth {
            upstream: self.cfg.name.clone(),
            what: what.clone(),
            problem,
            status: None,
            code: None,
        };
        let realm: http::Uri = req
            .realm
            .parse()
            .map_err(|_| fail("the challenge's realm is not a valid url".into()))?;
        let realm_https = match (realm.scheme_str(), realm.host()) {
            (Some("https"), Some(_)) => true,
            (Some("http"), Some(_)) => false,
            _ => return Err(fail("the challenge's realm is not an http(s) url".into())),
        };
        let credentials = self.auth.basic().cloned();
        if credentials.is_some() && self.https && !realm_https {
            return Err(fail(
                "refusing to send credentials to a plain http token realm".into(),
            ));
        }

        // A block: the serializer is not `Send` and must not live across an await.
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(service) = &req.service {
                query.append_pair("service", service);
            }
            if !req.scope.is_empty() {
                query.append_pair("scope", &req.scope);
            }
            query.finish()
        };
        let sep = if req.realm.contains('?') { '&' } else { '?' };
        let url = match query.is_empty() {
            true => req.realm.clone(),
            false => format!("{}{sep}{query}", req.realm),
        };

        let mut headers = http::HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        let resp = self
            .exchange(&Method::GET, &url, &headers, credentials.as_ref(), &what)
            .await?;
        let status = resp.status();
        let body = read_small(
            resp.into_body(),
            TOKEN_REPLY_LIMIT,
            &self.cfg.name,
            &what,
            self.cfg.idle_timeout,
        )
        .await?;
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let who = match credentials {
                    Some(_) => "the configured credentials",
                    None => "anonymous access",
                };
                return Err(fail(format!("the token service refused {who} ({status})")));
            }
            s => {
                return Err(UpstreamError::Status {
                    upstream: self.cfg.name.clone(),
                    what,
                    status: s,
                    code: None,
                    message: None,
                })
            }
        }
        let body = body.ok_or_else(|| fail("token response too large".into()))?;
        let reply: Reply = serde_json::from_slice(&body).map_err(|e| {
            // Not `{e}`: serde quotes the offending value, which may be secret.
            let (line, column) = (e.line(), e.column());
            fail(format!(
                "token response is not the expected JSON (line {line}, column {column})"
            ))
        })?;
        let token = reply
            .token
            .filter(|t| !t.is_empty())
            .or(reply.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| fail("token response has neither token nor access_token".into()))?;
        Ok(Granted {
            token,
            expires_in: Duration::from_secs(reply.expires_in.unwrap_or(DEFAULT_EXPIRES_IN)),
        })
    }
}
