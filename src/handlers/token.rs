//! `/token`: the token endpoint of the registry token flow (Docker's token
//! authentication spec, and its OAuth2 POST form). It answers anyone: credentials that
//! fail were refused before this, and a token only carries the access its holder has.
//!
//! Renewal: a JWT presented as Bearer gets a token with at most its own access and its
//! own `exp` (never later), and only while the user or API token it was issued for
//! still stands (checked when it authenticates, see `crate::auth`).

use crate::app::App;
use crate::auth::jwt::Access;
use crate::auth::Identity;
use crate::config::Action;
use crate::error::{Error, Result};
use crate::handlers::Ctx;
use crate::oci::{ErrorCode, RepoName};
use crate::web::body::{json, read_limited, Body, ReqBody};
use crate::web::query;
use base64::Engine;
use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use std::sync::Arc;

/// The largest POST form accepted.
const MAX_FORM: u64 = 64 << 10;

pub async fn handle(
    app: &Arc<App>,
    mut id: Identity,
    req: Request<ReqBody>,
    ctx: &mut Ctx,
) -> Result<Response<Body>> {
    let mut params = query(req.uri());
    let client = ctx.client;
    if req.method() == Method::POST {
        let body = read_limited(req.into_body(), MAX_FORM)
            .await
            .map_err(|e| {
                Error::bad_request(ErrorCode::Unsupported, format!("reading the form: {e}"))
            })?
            .ok_or_else(|| Error::bad_request(ErrorCode::SizeInvalid, "form too large"))?;
        let form: Vec<(String, String)> = form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match get("grant_type").as_deref() {
            Some("password") => {
                let (user, pass) = (
                    get("username").unwrap_or_default(),
                    get("password").unwrap_or_default(),
                );
                let basic =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                let header = format!("Basic {basic}");
                id = app
                    .auth
                    .authenticate(Some(&header), client)
                    .await
                    .map_err(|e| {
                        Error::client(
                            StatusCode::UNAUTHORIZED,
                            ErrorCode::Unauthorized,
                            e.to_string(),
                        )
                    })?;
                ctx.identity = id.user.clone();
            }
            // OAuth2 client credentials: an API token's id as client_id and the token
            // itself as client_secret (in the form, or as HTTP Basic `id:secret`, which
            // authenticated the request already). The token gets what the API token may.
            Some("client_credentials") => {
                let refused = |why: &str| {
                    Error::client(
                        StatusCode::UNAUTHORIZED,
                        ErrorCode::Unauthorized,
                        format!("invalid_client: {why}"),
                    )
                };
                match (get("client_id"), get("client_secret")) {
                    (Some(cid), Some(secret)) => {
                        if !secret.starts_with(crate::auth::API_TOKEN_PREFIX) {
                            return Err(refused("client_secret is not an API token"));
                        }
                        id = app
                            .auth
                            .authenticate(Some(&format!("Bearer {secret}")), client)
                            .await
                            .map_err(|e| refused(&e.to_string()))?;
                        if id.token_id.as_deref() != Some(cid.as_str()) {
                            return Err(refused("client_id does not name that API token"));
                        }
                    }
                    (None, None) if matches!(id.method, crate::auth::Method::ApiToken(_)) => {}
                    _ => {
                        return Err(refused(
                            "give an API token's id and the token as client_id and client_secret",
                        ))
                    }
                }
                ctx.identity = id.user.clone();
            }
            Some("refresh_token") => {
                return Err(Error::bad_request(
                    ErrorCode::Unsupported,
                    "refresh tokens are not issued here: log in with a password or an API token",
                ))
            }
            _ => {}
        }
        params.extend(form);
    }
    let service = app.auth.service();
    if let Some(s) = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v) {
        if *s != service {
            return Err(Error::bad_request(
                ErrorCode::Unsupported,
                format!("unknown service {s:?}: this registry is {service:?}"),
            ));
        }
    }
    // GET sends one `scope` per scope, the POST form one space-separated list.
    let scopes = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split_whitespace());
    let mut access = Vec::new();
    for scope in scopes {
        if let Some(a) = grant(app, &id, scope) {
            access.push(a);
        }
    }
    let (token, ttl) = app.auth.issue(&id, access.clone());
    crate::metrics::token_issued();
    if !id.is_anonymous() {
        let granted: Vec<String> = access
            .iter()
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect();
        app.auth.audit(
            "login",
            id.user.as_deref(),
            Some(&client.to_string()),
            None,
            Some(&granted.join(" ")),
        );
    }
    let issued = crate::auth::store::rfc3339(crate::auth::store::now_secs());
    Ok(json(
        StatusCode::OK,
        &json!({
            "token": token,
            "access_token": token,
            "expires_in": ttl.as_secs(),
            "issued_at": issued,
        }),
    ))
}

/// What of `scope` (`repository:NAME:pull,push`, `registry:catalog:*`) `id` gets;
/// `None` for a malformed scope or one with nothing granted.
fn grant(app: &Arc<App>, id: &Identity, scope: &str) -> Option<Access> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // `repository(plugin)` is a repository too.
    let kind = kind.split('(').next().unwrap_or(kind);
    let actions: Vec<&str> = actions.split(',').map(str::trim).collect();
    let granted: Vec<String> = match kind {
        "repository" => {
            let name = RepoName::parse(name).ok()?;
            let wanted: Vec<Action> = actions
                .iter()
                .filter_map(|a| Action::parse(a).ok())
                .collect();
            app.grantable(id, &name, &wanted)
                .into_iter()
                .map(|a| a.as_str().to_string())
                .collect()
        }
        "registry" if name == "catalog" => vec!["*".to_string()],
        "registry" if app.auth.is_admin(id) => actions.iter().map(|a| a.to_string()).collect(),
        _ => Vec::new(),
    };
    (!granted.is_empty()).then(|| Access {
        kind: kind.to_string(),
        name: name.to_string(),
        actions: granted,
    })
}
