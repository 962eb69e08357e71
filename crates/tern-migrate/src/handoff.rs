//! Exactly one owner: the source's side of the handoff, as a state machine.
//!
//! A guest must never be lost (nobody runs it) nor duplicated (both run
//! it). The source keeps the guest until the destination has a complete,
//! paused copy *and* the source has durably recorded that it gave the guest
//! away; only then does it let go. [`State`] names where a migration is,
//! and its transitions are the only way to move on:
//!
//! ```text
//!             pause                Restored           hand_over           Commit sent
//! SourceOwns -------> Paused -----------------> DestRestored -------> HandedOver -------> Committed
//!     |                 |        (received)         |     (recorded)                    (source let go)
//!     | fail            | fail                      | fail
//!     v                 v                           v
//!   Kept        ResumedAtSource <-------------------+
//! (never paused)  (Abort sent, guest resumed here)
//! ```
//!
//! * `SourceOwns`: the guest runs here; memory may be on its way
//!   (pre-copy rounds). A failure leaves it running here (`Kept`): the
//!   connection is dropped and the destination discards what it built.
//! * `Paused`: the guest is paused here for the last copy and `Final`.
//!   A failure (the destination's `Abort`, a broken connection, no
//!   `Restored` within the ack timeout) sends `Abort` and resumes it here.
//! * `DestRestored`: the destination said `Restored`: it holds a paused
//!   copy. The source still owns the guest: if recording the handoff
//!   fails, it sends `Abort` and resumes it here.
//! * `HandedOver`: the handoff is recorded ([`SourceGuest::hand_over`]);
//!   from now on the destination owns the guest whatever happens, and a
//!   `Resolve` for this migration is answered `destination: true`. No
//!   failure can take it back: there is no `fail` from here.
//! * `Committed`: `Commit` was sent (best effort: a destination that misses
//!   it asks `Resolve`). The source has let go.
//!
//! The destination's side is in [`crate::dest`]: it builds the guest,
//! says `Restored`, and runs it on `Commit`; if the connection breaks
//! before `Commit` it asks the source (`Resolve`) and runs the guest if the
//! source answers `destination: true` or refuses the connection (a source
//! process that is gone took its copy with it). `docs/migration.md` has
//! both sides and the sequence of messages.
//!
//! [`State`] is the bare machine (transitions return the next state or an
//! [`Illegal`] error); `Handoff` (crate-private) drives it for one migration, doing what
//! each transition means to the guest and to the peer.

use std::fmt;

use crate::proto::Message;
use crate::source::SourceGuest;
use crate::transport::Link;
use crate::MigrateError;

/// Where the handoff of one guest is, as the source sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The guest runs here (memory may be on its way).
    SourceOwns,
    /// Paused here; the last pages and `Final` go out, `Restored` awaited.
    Paused,
    /// The destination holds a paused copy; the handoff is not recorded yet.
    DestRestored,
    /// The handoff is recorded: the destination owns the guest.
    HandedOver,
    /// `Commit` sent; the source let go (final).
    Committed,
    /// Failed after the pause; the guest runs here again (final).
    ResumedAtSource,
    /// Failed before the pause; the guest never stopped here (final).
    Kept,
}

/// A transition the state machine does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Illegal {
    /// The state it was tried from.
    pub from: State,
    /// The transition.
    pub transition: &'static str,
}

impl fmt::Display for Illegal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "migration handoff: cannot {} from {:?}",
            self.transition, self.from
        )
    }
}

impl std::error::Error for Illegal {}

impl From<Illegal> for MigrateError {
    fn from(e: Illegal) -> MigrateError {
        MigrateError::Local(e.to_string())
    }
}

impl State {
    fn to(self, transition: &'static str, from: State, next: State) -> Result<State, Illegal> {
        if self == from {
            Ok(next)
        } else {
            Err(Illegal {
                from: self,
                transition,
            })
        }
    }

    /// The guest paused here: `SourceOwns` -> `Paused`.
    pub fn pause(self) -> Result<State, Illegal> {
        self.to("pause", State::SourceOwns, State::Paused)
    }

    /// The destination said `Restored`: `Paused` -> `DestRestored`.
    pub fn restored(self) -> Result<State, Illegal> {
        self.to("take Restored", State::Paused, State::DestRestored)
    }

    /// The handoff is recorded: `DestRestored` -> `HandedOver`.
    pub fn hand_over(self) -> Result<State, Illegal> {
        self.to("hand over", State::DestRestored, State::HandedOver)
    }

    /// `Commit` sent: `HandedOver` -> `Committed`.
    pub fn commit(self) -> Result<State, Illegal> {
        self.to("commit", State::HandedOver, State::Committed)
    }

    /// The migration failed: the source keeps the guest. `SourceOwns` ->
    /// `Kept`; `Paused` or `DestRestored` -> `ResumedAtSource`. Illegal
    /// once the handoff is recorded, and from a final state.
    pub fn fail(self) -> Result<State, Illegal> {
        match self {
            State::SourceOwns => Ok(State::Kept),
            State::Paused | State::DestRestored => Ok(State::ResumedAtSource),
            from => Err(Illegal {
                from,
                transition: "fail",
            }),
        }
    }

    /// True while the guest is paused here and only here.
    pub fn paused_here(self) -> bool {
        matches!(self, State::Paused | State::DestRestored)
    }
}

/// The handoff of one guest: the [`State`] machine plus what its
/// transitions do to the guest ([`SourceGuest`]) and tell the destination.
pub(crate) struct Handoff<'g> {
    state: State,
    guest: &'g dyn SourceGuest,
}

impl<'g> Handoff<'g> {
    /// A guest running here.
    pub(crate) fn new(guest: &'g dyn SourceGuest) -> Handoff<'g> {
        Handoff {
            state: State::SourceOwns,
            guest,
        }
    }

    /// Where it is.
    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Pauses the guest (an error, e.g. [`MigrateError::Ended`], leaves it
    /// in `SourceOwns`).
    pub(crate) fn pause(&mut self) -> Result<(), MigrateError> {
        let next = self.state.pause()?;
        self.guest.pause()?;
        self.state = next;
        Ok(())
    }

    /// Waits for the destination's `Restored` (anything else is an error).
    pub(crate) fn await_restored(&mut self, link: &mut Link) -> Result<(), MigrateError> {
        let next = self.state.restored()?;
        link.expect("Restored", |m| match m {
            Message::Restored => Ok(()),
            other => Err(other),
        })?;
        self.state = next;
        Ok(())
    }

    /// Records durably that the destination owns the guest now (an error
    /// leaves it in `DestRestored`: the guest is still ours).
    pub(crate) fn hand_over(&mut self, migration_id: &str) -> Result<(), MigrateError> {
        let next = self.state.hand_over()?;
        self.guest.hand_over(migration_id)?;
        self.state = next;
        Ok(())
    }

    /// Sends `Commit`, best effort: the handoff is recorded, so a
    /// destination that misses it learns the outcome through `Resolve`.
    pub(crate) fn commit(&mut self, link: &mut Link) -> Result<(), Illegal> {
        let next = self.state.commit()?;
        let _ = link.send_now(&Message::Commit);
        self.state = next;
        Ok(())
    }

    /// The migration failed with `why`: the source keeps the guest. A
    /// paused guest is resumed here after `Abort(why)` tells the
    /// destination; before the pause nothing is sent (the destination sees
    /// the connection close). Illegal (and nothing done) once handed over.
    pub(crate) fn fail(&mut self, link: &mut Link, why: &MigrateError) -> Result<State, Illegal> {
        let next = self.state.fail()?;
        if self.state.paused_here() {
            // The destination never confirmed, or the handoff could not be
            // recorded: the guest stays (and runs) here.
            link.abort(why);
            self.guest.resume();
        }
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::State::{self, *};

    const ALL: [State; 7] = [
        SourceOwns,
        Paused,
        DestRestored,
        HandedOver,
        Committed,
        ResumedAtSource,
        Kept,
    ];

    /// Every transition from every state: exactly the arrows of the
    /// module's diagram are legal; every other one is refused, naming the
    /// state it was tried from.
    #[test]
    fn only_the_diagrams_transitions_are_legal() {
        type Transition = fn(State) -> Result<State, super::Illegal>;
        type Legal = &'static [(State, State)];
        let transitions: [(&str, Transition, Legal); 5] = [
            ("pause", State::pause, &[(SourceOwns, Paused)]),
            ("take Restored", State::restored, &[(Paused, DestRestored)]),
            ("hand over", State::hand_over, &[(DestRestored, HandedOver)]),
            ("commit", State::commit, &[(HandedOver, Committed)]),
            (
                "fail",
                State::fail,
                &[
                    (SourceOwns, Kept),
                    (Paused, ResumedAtSource),
                    (DestRestored, ResumedAtSource),
                ],
            ),
        ];
        for (name, t, legal) in transitions {
            for from in ALL {
                match legal.iter().find(|(f, _)| *f == from) {
                    Some((_, to)) => assert_eq!(t(from), Ok(*to), "{name} from {from:?}"),
                    None => {
                        let e = t(from).unwrap_err();
                        assert_eq!((e.from, e.transition), (from, name));
                        assert!(e.to_string().contains(&format!("{from:?}")), "{e}");
                    }
                }
            }
        }
        // The guest is paused here (and must be resumed on failure) only
        // between the pause and the recorded handoff.
        let paused: Vec<State> = ALL.into_iter().filter(|s| s.paused_here()).collect();
        assert_eq!(paused, [Paused, DestRestored]);
    }
}
