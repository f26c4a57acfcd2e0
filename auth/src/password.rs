//! Password hashing with argon2id, off the async workers, behind a semaphore sized to the cores.
//!
//! Hashes run on a few dedicated threads at the lowest CPU priority (`SCHED_BATCH`, nice 19 on
//! Linux) rather than on the shared blocking pool: when a login flood and ordinary requests
//! compete for the cores, the scheduler serves the requests first, and the logins take what is
//! left. The semaphore queues logins beyond the thread count without holding any thread.

use crate::config::Argon2Config;
use crate::error::AuthError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use shared::Secret;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{Semaphore, oneshot};

pub(crate) const MIN_PASSWORD_CHARS: usize = 8;
pub(crate) const MAX_PASSWORD_CHARS: usize = 128;

/// Checks a new password's length (in characters, not bytes).
pub(crate) fn validate_new_password(field: &str, password: &Secret) -> Result<(), AuthError> {
    let chars = password.expose().chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AuthError::validation(
            field,
            format!("The password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters long."),
        ));
    }
    Ok(())
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verified {
    /// Correct; `rehash` when the stored hash uses other parameters than the configured ones.
    Yes {
        rehash: bool,
    },
    No,
}

#[derive(Debug, Clone)]
pub(crate) struct Hasher {
    params: Params,
    permits: Arc<Semaphore>,
    threads: Arc<HashThreads>,
    /// Verified against when the account does not exist, so that an unknown email costs the
    /// same time as a wrong password.
    dummy_hash: Arc<str>,
}

impl Hasher {
    /// Starts the hashing threads and computes the dummy hash on them (never on an async worker).
    pub(crate) async fn new(config: &Argon2Config, concurrency: usize) -> Result<Self, AuthError> {
        let params = argon2_params(config)?;
        let concurrency = match concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut hasher = Self {
            params: params.clone(),
            permits: Arc::new(Semaphore::new(concurrency)),
            threads: Arc::new(HashThreads::spawn(concurrency)?),
            dummy_hash: Arc::from(""),
        };
        hasher.dummy_hash =
            hasher.run(move || hash_blocking(&params, &Secret::new("keel-dummy-password"))).await?.into();
        Ok(hasher)
    }

    pub(crate) async fn hash(&self, password: Secret) -> Result<String, AuthError> {
        let params = self.params.clone();
        self.run(move || hash_blocking(&params, &password)).await
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no account.
    pub(crate) async fn verify(&self, password: Secret, hash: Option<String>) -> Result<Verified, AuthError> {
        let params = self.params.clone();
        let exists = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let verified = self.run(move || verify_blocking(&params, &password, &hash)).await?;
        Ok(if exists { verified } else { Verified::No })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let _permit =
            self.permits.acquire().await.map_err(|_| AuthError::Unavailable("password hasher closed".into()))?;
        let (done, result) = oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| span.in_scope(f)))
                .unwrap_or_else(|_| Err(AuthError::Internal("password hashing panicked".into())));
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = done.send(outcome);
        });
        self.threads.jobs.send(job).map_err(|_| AuthError::Unavailable("password hasher stopped".into()))?;
        result.await.map_err(|_| AuthError::Internal("password hashing thread failed".into()))?
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads; they stop when the last `Hasher` clone is dropped.
#[derive(Debug)]
struct HashThreads {
    jobs: mpsc::Sender<Job>,
}

impl HashThreads {
    fn spawn(count: usize) -> Result<Self, AuthError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..count {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("keel-argon2-{n}"))
                .spawn(move || {
                    lower_own_priority();
                    loop {
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break,
                        }
                    }
                })
                .map_err(|e| AuthError::Internal(format!("cannot start a password hashing thread: {e}")))?;
        }
        Ok(Self { jobs })
    }
}

/// Best effort: a platform that refuses leaves the thread at normal priority.
fn lower_own_priority() {
    use thread_priority::ThreadPriority;
    #[cfg(target_os = "linux")]
    let result = thread_priority::unix::set_thread_priority_and_policy(
        thread_priority::unix::thread_native_id(),
        ThreadPriority::Min,
        thread_priority::unix::ThreadSchedulePolicy::Normal(thread_priority::unix::NormalThreadSchedulePolicy::Batch),
    );
    #[cfg(not(target_os = "linux"))]
    let result = thread_priority::set_current_thread_priority(ThreadPriority::Min);
    if let Err(error) = result {
        tracing::warn!(error = ?error, "cannot lower the priority of a password hashing thread");
    }
}

/// The argon2 parameters of the configuration, or why they are unusable.
pub(crate) fn argon2_params(config: &Argon2Config) -> Result<Params, AuthError> {
    Params::new(config.memory_kib, config.iterations, config.parallelism, None)
        .map_err(|e| AuthError::Internal(format!("invalid argon2 parameters: {e}")))
}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

fn hash_blocking(params: &Params, password: &Secret) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Internal(format!("OS random generator failed: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Internal(format!("salt encoding: {e}")))?;
    argon2(params)
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Internal(format!("password hashing failed: {e}")))
}

fn verify_blocking(params: &Params, password: &Secret, hash: &str) -> Result<Verified, AuthError> {
    let parsed = PasswordHash::new(hash).map_err(|e| AuthError::Internal(format!("stored hash unreadable: {e}")))?;
    if argon2(params).verify_password(password.expose().as_bytes(), &parsed).is_err() {
        return Ok(Verified::No);
    }
    let current = parsed.algorithm.as_str() == "argon2id"
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == params.m_cost() && p.t_cost() == params.t_cost() && p.p_cost() == params.p_cost()
        });
    Ok(Verified::Yes { rehash: !current })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Argon2Config = Argon2Config { memory_kib: 1024, iterations: 1, parallelism: 1 };

    #[tokio::test]
    async fn hash_is_argon2id_phc_with_configured_params_and_verifies() {
        let hasher = Hasher::new(&FAST, 1).await.unwrap();
        let hash = hasher.hash(Secret::new("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        let again = hasher.hash(Secret::new("correct horse")).await.unwrap();
        assert_ne!(hash, again, "salts must differ");
        assert_eq!(
            hasher.verify(Secret::new("correct horse"), Some(hash.clone())).await.unwrap(),
            Verified::Yes { rehash: false }
        );
        assert_eq!(hasher.verify(Secret::new("wrong horse"), Some(hash)).await.unwrap(), Verified::No);
    }

    #[tokio::test]
    async fn other_parameters_ask_for_a_rehash() {
        let old = Hasher::new(&Argon2Config { memory_kib: 2048, ..FAST }, 1).await.unwrap();
        let hash = old.hash(Secret::new("correct horse")).await.unwrap();
        let new = Hasher::new(&FAST, 1).await.unwrap();
        assert_eq!(new.verify(Secret::new("correct horse"), Some(hash)).await.unwrap(), Verified::Yes { rehash: true });
    }

    #[tokio::test]
    async fn missing_account_never_verifies() {
        let hasher = Hasher::new(&FAST, 1).await.unwrap();
        assert_eq!(hasher.verify(Secret::new("keel-dummy-password"), None).await.unwrap(), Verified::No);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_on_low_priority_batch_threads() {
        use thread_priority::unix::{NormalThreadSchedulePolicy, ThreadSchedulePolicy, thread_schedule_policy};
        let hasher = Hasher::new(&FAST, 2).await.unwrap();
        let (name, policy) = hasher
            .run(|| Ok((std::thread::current().name().map(str::to_owned), thread_schedule_policy().ok())))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("keel-argon2-"));
        assert_eq!(policy, Some(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch)));
    }

    #[tokio::test]
    async fn a_flood_of_hashes_is_bounded_by_the_semaphore_and_all_complete() {
        let hasher = Hasher::new(&FAST, 2).await.unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|n| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash(Secret::new(format!("password {n}"))).await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().unwrap().starts_with("$argon2id$"));
        }
        assert_eq!(hasher.permits.available_permits(), 2);
    }

    #[test]
    fn password_length_is_counted_in_characters() {
        assert!(validate_new_password("password", &Secret::new("1234567")).is_err());
        assert!(validate_new_password("password", &Secret::new("12345678")).is_ok());
        assert!(validate_new_password("password", &Secret::new("é".repeat(128))).is_ok());
        assert!(validate_new_password("password", &Secret::new("a".repeat(129))).is_err());
    }
}
