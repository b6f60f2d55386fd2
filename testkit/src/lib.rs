//! What the tests and benchmarks stand on, kept out of the production
//! services (only `alphadome simulate` uses the Graph API stand-in):
//!
//! - stand-ins for the outside services, speaking their real formats:
//!   the Graph API ([`graph`]), an OpenAI-compatible LLM ([`llm`]), an SMTP
//!   relay ([`smtp`]);
//! - Meta-shaped, correctly signed webhooks ([`webhooks`]);
//! - per-test resources on the shared servers (a database, a NATS prefix,
//!   a master key: [`fixtures`]) and servers of a test's own that can be
//!   stopped ([`servers`]);
//! - tenants made through the manifest path ([`tenants`]);
//! - the platform as child processes ([`proc`]) and the load generator
//!   ([`load`]).

pub mod fixtures;
pub mod graph;
pub mod llm;
pub mod load;
pub mod proc;
pub mod servers;
pub mod smtp;
pub mod tenants;
pub mod webhooks;
