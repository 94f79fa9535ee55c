//! Reason codes for responses the proxy makes itself, in the spirit of Envoy's response flags.
//!
//! Every locally generated response carries `x-weft-reason: <code>` and the code appears in the access
//! log, so an operator can tell a proxy-made 503 from the application's own 503.

use http::StatusCode;

/// Response header naming why the proxy answered by itself.
pub const REASON_HEADER: &str = "x-weft-reason";
/// Set on a 503 caused by a circuit breaker (Envoy's `x-envoy-overloaded`).
pub const OVERFLOW_HEADER: &str = "x-weft-overflow";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No virtual host or route matched.
    NoRoute,
    /// The route's cluster does not exist or has no endpoint to pick.
    NoHealthyUpstream,
    /// Connecting to the upstream failed or timed out.
    UpstreamConnectFailure,
    /// The upstream closed or reset the connection before a full response.
    UpstreamReset,
    /// The route timeout (or per-try timeout on the last try) fired.
    UpstreamTimeout,
    /// A circuit breaker (connections, pending, requests) refused the request.
    Overflow,
    /// The upstream sent something that is not valid HTTP.
    UpstreamProtocolError,
    /// The downstream request was malformed or ambiguous (e.g. smuggling shapes, a bad chunked
    /// body).
    DownstreamProtocolError,
    /// The client went away (closed or reset) before its request body ended (Envoy's `DC`).
    DownstreamDisconnect,
    /// A route answered directly or redirected (not an error; logged for completeness).
    DirectResponse,
    /// A route's fault injection aborted the request (Envoy's `FI`).
    FaultInjected,
    /// A local rate limit (listener or route) refused the request (Envoy's `RL`).
    RateLimited,
    /// The global rate limit service said over limit (Envoy's `RL` too).
    GlobalRateLimited,
    /// The rate limit service failed and `failure_mode_deny` is set (Envoy's `RLSE`).
    RateLimitServiceError,
    /// The route names a cluster that does not exist (yet): with dynamic configuration a route can
    /// arrive before its cluster (Envoy's `NC`).
    NoCluster,
    /// Authorization (RBAC) denied the request (403) or closed the TCP connection.
    Rbac,
    /// JWT authentication (`jwt_authn`) refused the request: 401, or 403 for a disallowed
    /// audience; the body is Envoy's status text.
    JwtAuthn,
}

impl Reason {
    /// The short code used in headers and logs.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NoRoute => "NR",
            Reason::NoHealthyUpstream => "UH",
            Reason::UpstreamConnectFailure => "UF",
            Reason::UpstreamReset => "UC",
            Reason::UpstreamTimeout => "UT",
            Reason::Overflow => "UO",
            Reason::UpstreamProtocolError => "UPE",
            Reason::DownstreamProtocolError => "DPE",
            Reason::DownstreamDisconnect => "DC",
            Reason::DirectResponse => "DR",
            Reason::FaultInjected => "FI",
            Reason::RateLimited | Reason::GlobalRateLimited => "RL",
            Reason::RateLimitServiceError => "RLSE",
            Reason::NoCluster => "NC",
            Reason::Rbac => "RBAC",
            Reason::JwtAuthn => "JWT",
        }
    }

    /// Envoy's `%RESPONSE_FLAGS%` short form; `None` for a direct response (not a failure in
    /// Envoy's eyes, which logs `-`).
    pub fn envoy_flag(self) -> Option<&'static str> {
        match self {
            // Envoy's RBAC filter sets no response flag: its logs show `-` and the details say why.
            Reason::DirectResponse | Reason::Rbac | Reason::JwtAuthn => None,
            Reason::UpstreamProtocolError => Some("UPE"),
            r => Some(r.code()),
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a response the proxy made or a failed exchange.
    pub fn details(self) -> &'static str {
        match self {
            Reason::NoRoute => "route_not_found",
            Reason::NoHealthyUpstream => "no_healthy_upstream",
            Reason::UpstreamConnectFailure => "upstream_reset_before_response_started{connection_failure}",
            Reason::UpstreamReset => "upstream_reset_before_response_started{connection_termination}",
            Reason::UpstreamTimeout => "response_timeout",
            Reason::Overflow => "upstream_reset_before_response_started{overflow}",
            Reason::UpstreamProtocolError => "upstream_reset_before_response_started{protocol_error}",
            Reason::DownstreamProtocolError => "downstream_protocol_error",
            Reason::DownstreamDisconnect => "downstream_remote_disconnect",
            Reason::DirectResponse => "direct_response",
            Reason::FaultInjected => "fault_filter_abort",
            Reason::RateLimited => "local_rate_limited",
            Reason::GlobalRateLimited => "request_rate_limited",
            Reason::RateLimitServiceError => "rate_limiter_error",
            Reason::NoCluster => "cluster_not_found",
            // The access log carries `rbac_access_denied_matched_policy[<name>]` instead.
            Reason::Rbac => "rbac_access_denied",
            Reason::JwtAuthn => "jwt_authn_access_denied",
        }
    }

    /// A failure on the upstream side that retries may have been spent on (Envoy adds `URX`).
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Reason::UpstreamConnectFailure
                | Reason::UpstreamReset
                | Reason::UpstreamTimeout
                | Reason::UpstreamProtocolError
                | Reason::Overflow
        )
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reason::NoRoute => StatusCode::NOT_FOUND,
            Reason::NoHealthyUpstream
            | Reason::NoCluster
            | Reason::UpstreamConnectFailure
            | Reason::UpstreamReset
            | Reason::Overflow => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::UpstreamProtocolError => StatusCode::BAD_GATEWAY,
            Reason::DownstreamProtocolError | Reason::DownstreamDisconnect => StatusCode::BAD_REQUEST,
            Reason::DirectResponse => StatusCode::OK,
            // The configured abort status replaces this one.
            Reason::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
            Reason::RateLimited | Reason::GlobalRateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::RateLimitServiceError => StatusCode::INTERNAL_SERVER_ERROR,
            Reason::Rbac => StatusCode::FORBIDDEN,
            Reason::JwtAuthn => StatusCode::UNAUTHORIZED,
        }
    }

    /// The body of the generated response.
    pub fn body(self) -> &'static str {
        match self {
            Reason::NoRoute => "no route matched this request (NR)\n",
            Reason::NoHealthyUpstream => "no healthy upstream (UH)\n",
            Reason::UpstreamConnectFailure => "upstream connect error (UF)\n",
            Reason::UpstreamReset => "upstream connection closed before a response (UC)\n",
            Reason::UpstreamTimeout => "upstream request timeout (UT)\n",
            Reason::Overflow => "upstream overflow: circuit breaker open (UO)\n",
            Reason::UpstreamProtocolError => "upstream protocol error (UPE)\n",
            Reason::DownstreamProtocolError => "bad request (DPE)\n",
            Reason::DownstreamDisconnect => "request body aborted by the client (DC)\n",
            Reason::DirectResponse => "",
            Reason::FaultInjected => "fault filter abort (FI)\n",
            Reason::RateLimited => "local rate limited (RL)\n",
            Reason::GlobalRateLimited => "rate limited (RL)\n",
            Reason::RateLimitServiceError => "rate limit service error (RLSE)\n",
            Reason::NoCluster => "no cluster match for the route (NC)\n",
            // Envoy's body, byte for byte (clients and tests compare it).
            Reason::Rbac => "RBAC: access denied",
            // Replaced by the exact status text (`weft_jwt::Status::text`).
            Reason::JwtAuthn => "Jwt verification fails",
        }
    }
}
