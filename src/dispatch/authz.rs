//! Authorization answers: who may see a request's resource, and the refusal (401 with
//! the token challenge, or 403) when the caller may not. A refusal never tells a private
//! repository from a missing one.

use super::Ctx;
use crate::app::App;
use crate::auth::{AuthError, Identity};
use crate::config::{Action, HostedWrites};
use crate::error::{Error, Result};
use crate::oci::ErrorCode;
use crate::web::body::ReqBody;
use http::{header, Request, StatusCode};

/// `server.hosted_writes = "loopback"`: an anonymous client on loopback may do
/// anything to hosted repositories (development and tests).
/// The client is the forwarded one behind a trusted proxy: a proxy on loopback does
/// not make its clients local.
pub(super) fn loopback_dev(app: &App, id: &Identity, client: std::net::IpAddr) -> bool {
    app.config.server.hosted_writes == HostedWrites::Loopback
        && id.is_anonymous()
        && client.is_loopback()
}

/// The admin API needs `admin` on `*` (or the loopback development mode).
pub(super) fn require_admin(
    app: &App,
    id: &Identity,
    req: &Request<ReqBody>,
    ctx: &Ctx,
) -> Result<()> {
    if loopback_dev(app, id, ctx.client) || app.auth.is_admin(id) {
        return Ok(());
    }
    let scope = "registry:*:*".to_string();
    Err(deny_scoped(
        app,
        id,
        scope,
        Action::Admin,
        "admin API",
        req.headers(),
        ctx,
    ))
}

/// The refusal of a request `id` may not make. It never depends on whether the
/// repository exists: a private repository looks exactly like a missing one.
pub(super) fn deny(
    app: &App,
    id: &Identity,
    repo: &str,
    action: Action,
    headers: &http::HeaderMap,
    ctx: &Ctx,
) -> Error {
    let actions = match action {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
        Action::Admin => "*",
    };
    let scope = format!("repository:{repo}:{actions}");
    deny_scoped(app, id, scope, action, repo, headers, ctx)
}

pub(super) fn deny_scoped(
    app: &App,
    id: &Identity,
    scope: String,
    action: Action,
    what: &str,
    headers: &http::HeaderMap,
    ctx: &Ctx,
) -> Error {
    crate::metrics::auth_denied(action);
    let client = ctx.client.to_string();
    let detail = format!("{} {what}", action.as_str());
    app.auth.audit(
        "denied",
        id.user.as_deref(),
        Some(&client),
        ctx.repo.as_deref(),
        Some(&detail),
    );
    match &id.method {
        crate::auth::Method::Anonymous => challenge(app, headers, Some(scope), false),
        crate::auth::Method::Jwt(_) => challenge(app, headers, Some(scope), true),
        _ => Error::client(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            "requested access to the resource is denied",
        ),
    }
}

/// 401 with the token-flow challenge for `scope`.
pub(super) fn challenge(
    app: &App,
    headers: &http::HeaderMap,
    scope: Option<String>,
    insufficient: bool,
) -> Error {
    let mut c = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm(app, headers),
        app.auth.service()
    );
    if let Some(s) = scope {
        c.push_str(&format!(",scope=\"{s}\""));
    }
    let message = match insufficient {
        true => {
            c.push_str(",error=\"insufficient_scope\"");
            "insufficient scope: the token does not grant this access"
        }
        false => "authentication required",
    };
    Error::Unauthorized {
        challenge: c,
        message: message.into(),
    }
}

/// The token endpoint's URL: `auth.realm`, or this server as the client reached it.
pub fn realm(app: &App, headers: &http::HeaderMap) -> String {
    let configured = app.auth.realm();
    if !configured.is_empty() {
        return configured;
    }
    let scheme = match app.config.tls.enabled {
        true => "https",
        false => "http",
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        })
        .map(str::to_string)
        .unwrap_or_else(|| app.config.server.listen.to_string());
    format!("{scheme}://{host}/token")
}

pub(super) fn auth_error(app: &App, e: AuthError, headers: &http::HeaderMap) -> Error {
    match e {
        AuthError::Blocked { retry_after } => {
            crate::metrics::auth_failure_reason("blocked");
            Error::TooManyRequests {
                retry_after,
                message: e.to_string(),
            }
        }
        AuthError::BadToken(_) => {
            let mut err = challenge(app, headers, None, false);
            if let Error::Unauthorized { challenge, message } = &mut err {
                challenge.push_str(",error=\"invalid_token\"");
                *message = e.to_string();
            }
            err
        }
        AuthError::BadCredentials { .. } | AuthError::Malformed => {
            let mut err = challenge(app, headers, None, false);
            if let Error::Unauthorized { message, .. } = &mut err {
                *message = e.to_string();
            }
            err
        }
    }
}
