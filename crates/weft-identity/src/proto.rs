//! Istio's CA API (`security/proto/providers/google/...` aside, the one istio-agent speaks to istiod):
//!
//! ```proto
//! package istio.v1.auth;
//! service IstioCertificateService {
//!   rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse);
//! }
//! message IstioCertificateRequest {
//!   string csr = 1;                         // PEM
//!   int64 validity_duration = 3;            // seconds
//!   google.protobuf.Struct metadata = 4;
//! }
//! message IstioCertificateResponse {
//!   repeated string cert_chain = 1;         // PEM: leaf first, root last
//! }
//! ```
//!
//! Written by hand with `prost::Message` (no protoc). `metadata` is kept as the undecoded bytes of
//! the `google.protobuf.Struct`: it is the same on the wire, and weft reads nothing from it.

/// The request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PKCS#10 certificate signing request, PEM.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds; 0 or negative means the CA's default.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// An encoded `google.protobuf.Struct`, passed through unread.
    #[prost(bytes = "vec", tag = "4")]
    pub metadata: Vec<u8>,
}

/// The response.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the new leaf, then intermediates, then the root.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// gRPC path of the one method.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Renewal with the current SVID (see docs/security.md): the current leaf certificate, DER.
pub const SVID_METADATA: &str = "x-weft-svid-bin";
/// Renewal: ECDSA signature by the current SVID's key over [`renewal_message`].
pub const PROOF_METADATA: &str = "x-weft-proof-bin";
/// Renewal: the Unix time (seconds, decimal) that the proof signs.
pub const PROOF_TIME_METADATA: &str = "x-weft-proof-time";

/// What a renewal proof signs: a fixed context string, the time and the whole CSR, so a proof
/// captured on the wire is useless for any other CSR (whose key the eavesdropper does not have)
/// and expires after a few minutes.
pub fn renewal_message(unix_time: u64, csr_pem: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + csr_pem.len());
    m.extend_from_slice(b"weft-svid-renewal-v1\0");
    m.extend_from_slice(unix_time.to_string().as_bytes());
    m.push(0);
    m.extend_from_slice(csr_pem.as_bytes());
    m
}
