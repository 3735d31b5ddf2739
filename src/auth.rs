//! Auth: the token check in front of naming. Off by default; when on, a write must carry
//! a token (the instance's service_token, else `x-polaris-token`) that the config grants for
//! the request's namespace and service. Tokens are compared in constant time, as digests so
//! that their lengths do not show, and never logged.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use crate::code::Code;
use crate::naming::{InstanceInput, RequestContext};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an auth token is required (service_token or x-polaris-token)")]
    MissingToken,
    #[error("the token is not allowed to access {resource}")]
    NotAllowed { resource: String },
}

impl AuthError {
    /// The Polaris code the request is answered with.
    pub fn code(&self) -> Code {
        match self {
            AuthError::MissingToken => Code::EmptyAutToken,
            AuthError::NotAllowed { .. } => Code::NotAllowedAccess,
        }
    }
}

/// One configured token and the `namespace/service` patterns it may write.
#[derive(Clone)]
pub struct TokenGrant {
    digest: [u8; 20],
    allow: Vec<ResourcePattern>,
}

impl std::fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenGrant")
            .field("token", &"<redacted>")
            .field("allow", &self.allow)
            .finish()
    }
}

impl TokenGrant {
    pub fn new(token: &str, allow: &[String]) -> Self {
        TokenGrant {
            digest: digest(token),
            allow: allow.iter().map(|p| ResourcePattern::parse(p)).collect(),
        }
    }
}

/// `*`, `ns/*`, `ns/svc` or `*/svc`; `ns` alone means `ns/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePattern {
    namespace: Option<String>,
    service: Option<String>,
}

impl ResourcePattern {
    pub fn parse(pattern: &str) -> Self {
        let part = |p: &str| (p != "*").then(|| p.to_owned());
        match pattern.split_once('/') {
            Some((namespace, service)) => ResourcePattern {
                namespace: part(namespace),
                service: part(service),
            },
            None => ResourcePattern {
                namespace: part(pattern),
                service: None,
            },
        }
    }

    /// A request that names no namespace or service is matched only by wildcards.
    fn matches(&self, namespace: Option<&str>, service: Option<&str>) -> bool {
        let fits = |want: &Option<String>, got: Option<&str>| match want {
            None => true,
            Some(want) => got == Some(want.as_str()),
        };
        fits(&self.namespace, namespace) && fits(&self.service, service)
    }
}

fn digest(token: &str) -> [u8; 20] {
    Sha1::digest(token.as_bytes()).into()
}

/// The auth layer: the configured grants, or none when auth is off.
pub struct Auth {
    /// `None` when auth is off.
    grants: Option<Vec<TokenGrant>>,
}

impl Auth {
    pub fn new(grants: Option<Vec<TokenGrant>>) -> Self {
        Auth { grants }
    }

    /// Whether requests are checked at all.
    pub fn is_on(&self) -> bool {
        self.grants.is_some()
    }

    /// Whether the request may write the instance it names.
    pub fn check_write(
        &self,
        ctx: &RequestContext,
        input: &InstanceInput,
    ) -> Result<(), AuthError> {
        self.check(
            ctx,
            input,
            input.namespace.as_deref(),
            input.service.as_deref(),
        )
    }

    /// Whether the request's token (in `input`, else in the request's metadata) is
    /// granted `namespace`/`service`.
    pub fn check(
        &self,
        ctx: &RequestContext,
        input: &InstanceInput,
        namespace: Option<&str>,
        service: Option<&str>,
    ) -> Result<(), AuthError> {
        let Some(grants) = &self.grants else {
            return Ok(());
        };
        let token = input
            .service_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .or(ctx.token.as_deref().filter(|t| !t.is_empty()))
            .ok_or(AuthError::MissingToken)?;
        let presented = digest(token);
        // Every grant is compared, whatever matched earlier, so timing says nothing.
        let mut allowed = false;
        for grant in grants {
            let same: bool = grant.digest.ct_eq(&presented).into();
            allowed |= same && grant.allow.iter().any(|p| p.matches(namespace, service));
        }
        if allowed {
            Ok(())
        } else {
            Err(AuthError::NotAllowed {
                resource: format!("{}/{}", namespace.unwrap_or("?"), service.unwrap_or("?")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let ns_any = ResourcePattern::parse("ns/*");
        assert!(ns_any.matches(Some("ns"), Some("a")));
        assert!(!ns_any.matches(Some("other"), Some("a")));
        assert!(!ns_any.matches(None, Some("a")));
        let exact = ResourcePattern::parse("ns/svc");
        assert!(exact.matches(Some("ns"), Some("svc")));
        assert!(!exact.matches(Some("ns"), Some("svc2")));
        assert!(ResourcePattern::parse("*").matches(None, None));
        assert!(ResourcePattern::parse("*/*").matches(Some("x"), None));
        assert_eq!(ResourcePattern::parse("ns"), ns_any);
    }

    #[test]
    fn grant_debug_hides_the_token() {
        let grant = TokenGrant::new("s3cret", &["ns/*".to_owned()]);
        assert!(!format!("{grant:?}").contains("s3cret"));
    }
}
