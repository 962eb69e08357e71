//! [`Election`]: leader election on one key, fenced by its create revision.

use crate::{Cmp, CmpOp, Error, Etcd, LeaseKeeper, Op};

/// One candidate in a leader election among processes sharing a key
/// prefix.
///
/// The leader is whoever created `PREFIX/leader`: the key holds the
/// leader's name and is attached to the leader's lease, so it disappears
/// when the leader resigns, stops or stops renewing. Its create revision,
/// unique to that tenure, is the *fencing token*: a leader changes shared
/// state only with [`txn_as_leader`](Election::txn_as_leader), which
/// applies its operations only while the key still has that create
/// revision. A leader that was paused past its TTL and replaced therefore
/// cannot write, even before it notices.
///
/// Dropping the candidate revokes its lease, giving up the leadership at
/// once.
#[derive(Debug)]
pub struct Election {
    etcd: Etcd,
    key: String,
    name: String,
    ttl_secs: i64,
    /// Renews our lease; `None` once abandoned.
    keeper: Option<LeaseKeeper>,
    /// The create revision of the leader key when we last found it ours.
    token: Option<i64>,
}

impl Election {
    /// A candidate called `name` (what [`leader`](Election::leader)
    /// reports) in the election under `prefix`, with a lease of `ttl_secs`
    /// seconds kept alive in the background. It does not run for leader
    /// until [`try_lead`](Election::try_lead).
    pub fn new(etcd: Etcd, prefix: &str, name: &str, ttl_secs: i64) -> Result<Election, Error> {
        let keeper = LeaseKeeper::start(etcd.clone(), ttl_secs)?;
        Ok(Election {
            etcd,
            key: format!("{}/leader", prefix.trim_end_matches('/')),
            name: name.to_string(),
            ttl_secs,
            keeper: Some(keeper),
            token: None,
        })
    }

    /// The key whose creator leads: `PREFIX/leader`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// This candidate's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The candidate's current lease id, if it has one being kept alive.
    pub fn lease_id(&self) -> Option<i64> {
        self.keeper.as_ref().map(LeaseKeeper::id)
    }

    /// Tries to become leader, or confirms that we still are: creates the
    /// leader key with our name under our lease if it does not exist.
    /// Returns whether we lead now.
    ///
    /// If our lease was lost, the candidate first takes a fresh one (our
    /// old leadership, if any, is over).
    pub fn try_lead(&mut self) -> Result<bool, Error> {
        let lease = self.live_lease()?;
        let reply = self.etcd.txn(
            vec![Cmp::create_revision(&self.key, CmpOp::Equal, 0)],
            vec![
                Op::put(&self.key, self.name.as_bytes(), Some(lease)),
                Op::get(&self.key),
            ],
            vec![Op::get(&self.key)],
        );
        let reply = match reply {
            Ok(reply) => reply,
            Err(Error::LeaseLost(_)) => {
                // Expired between the check and the put: next time.
                self.token = None;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.token = reply
            .kvs()
            .find(|kv| kv.key == self.key && kv.lease == lease)
            .map(|kv| kv.create_revision);
        Ok(self.token.is_some())
    }

    /// Our lease, renewed by a live keeper: a new one if the keeper lost
    /// its lease or was abandoned.
    fn live_lease(&mut self) -> Result<i64, Error> {
        if let Some(keeper) = &self.keeper {
            if !keeper.lost() {
                return Ok(keeper.id());
            }
        }
        self.token = None;
        // Drop the lost keeper (nothing to revoke) before taking a new one.
        self.keeper = None;
        let keeper = LeaseKeeper::start(self.etcd.clone(), self.ttl_secs)?;
        let id = keeper.id();
        self.keeper = Some(keeper);
        Ok(id)
    }

    /// Whether we lead as far as this candidate knows: the last
    /// [`try_lead`](Election::try_lead) won, and neither
    /// [`txn_as_leader`](Election::txn_as_leader) nor the lease keeper has
    /// found out otherwise since. Decisions that matter go through
    /// `txn_as_leader`.
    pub fn is_leader(&self) -> bool {
        self.token.is_some() && !self.keeper.as_ref().is_some_and(LeaseKeeper::lost)
    }

    /// The create revision of the leader key while we hold it: our fencing
    /// token, increasing from one leader to the next.
    pub fn fencing_token(&self) -> Option<i64> {
        if self.is_leader() {
            self.token
        } else {
            None
        }
    }

    /// The current leader's name, or `None` if nobody leads.
    pub fn leader(&self) -> Result<Option<String>, Error> {
        match self.etcd.get(&self.key)? {
            None => Ok(None),
            Some(kv) => String::from_utf8(kv.value)
                .map(Some)
                .map_err(|e| Error::Decode(format!("the leader's name is not UTF-8: {e}"))),
        }
    }

    /// Applies `ops` atomically if we still lead, that is if the leader key
    /// still has our fencing token as its create revision; returns whether
    /// they were applied. Once this returns `false` we no longer lead.
    pub fn txn_as_leader(&mut self, ops: Vec<Op>) -> Result<bool, Error> {
        let Some(token) = self.token else {
            return Ok(false);
        };
        let reply = self.etcd.txn(
            vec![Cmp::create_revision(&self.key, CmpOp::Equal, token)],
            ops,
            vec![],
        )?;
        if !reply.succeeded {
            self.token = None;
        }
        Ok(reply.succeeded)
    }

    /// Gives up the leadership, if we hold it, by deleting the leader key
    /// (only if it is still ours). The candidate keeps its lease and may
    /// run again.
    pub fn resign(&mut self) -> Result<(), Error> {
        let Some(token) = self.token.take() else {
            return Ok(());
        };
        self.etcd.txn(
            vec![Cmp::create_revision(&self.key, CmpOp::Equal, token)],
            vec![Op::delete(&self.key)],
            vec![],
        )?;
        Ok(())
    }

    /// Stops renewing our lease without revoking it, as if this process
    /// had frozen: the leader key lapses after the TTL and another
    /// candidate may take over. This candidate still believes what it
    /// believed (`is_leader` does not change), so a test can check that
    /// [`txn_as_leader`](Election::txn_as_leader) fences it.
    pub fn abandon(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abandon();
        }
    }
}
