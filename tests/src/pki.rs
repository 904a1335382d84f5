//! Test certificates: a CA, a server certificate for `localhost` and `127.0.0.1`, a client
//! certificate from the same CA, a fleet member's certificate (server and client
//! authentication, for the name [`MEMBER`] only), and a client certificate from a CA the server
//! does not trust; written as PEM files into a directory.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The only name a member's certificate holds (not its address: members check each other
/// with `fleet.server_name`).
pub const MEMBER: &str = "trike-member";

/// The files written by [`Pki::write`].
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory holding the files.
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The trusted client's certificate and key (PEM).
    pub client_cert_pem: String,
    /// Its key.
    pub client_key_pem: String,
    /// A client certificate and key from an untrusted CA (PEM).
    pub rogue_cert_pem: String,
    /// Its key.
    pub rogue_key_pem: String,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = usage.to_vec();
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Generates the certificates into `dir` (created): `ca.crt`, `tls.crt`, `tls.key`,
    /// `member.crt`, `member.key`.
    pub fn write(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = new_ca("trike test CA");
        let (server_cert, server_key) = leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            &[ExtendedKeyUsagePurpose::ServerAuth],
        );
        let (client_cert_pem, client_key_pem) = leaf(
            &ca,
            &["trike-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        let rogue = new_ca("some other CA");
        let (rogue_cert_pem, rogue_key_pem) = leaf(
            &rogue,
            &["rogue-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("tls.crt"), server_cert).unwrap();
        std::fs::write(dir.join("tls.key"), server_key).unwrap();
        let (member_cert, member_key) = leaf(
            &ca,
            &[MEMBER],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        std::fs::write(dir.join("member.crt"), member_cert).unwrap();
        std::fs::write(dir.join("member.key"), member_key).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca_pem: ca.pem(),
            client_cert_pem,
            client_key_pem,
            rogue_cert_pem,
            rogue_key_pem,
        }
    }

    /// The `tls:` config section for these files (with `client_ca_file` when `mtls`).
    pub fn yaml(&self, mtls: bool) -> String {
        let d = self.dir.display();
        let mut y = format!("tls:\n  cert_file: {d}/tls.crt\n  key_file: {d}/tls.key\n");
        if mtls {
            y.push_str(&format!("  client_ca_file: {d}/ca.crt\n"));
        }
        y
    }

    /// The `tls:` and `fleet:` settings of an mTLS fleet member: its own certificate (for
    /// [`MEMBER`]) serves its listeners and is presented to the members it asks.
    pub fn member_yaml(&self) -> (String, String) {
        let d = self.dir.display();
        (
            format!(
                "tls:\n  cert_file: {d}/member.crt\n  key_file: {d}/member.key\n  client_ca_file: {d}/ca.crt\n"
            ),
            format!("server_name: {MEMBER}"),
        )
    }
}
