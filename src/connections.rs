//! Per-connection admission: at most one request of each client connection is inside the
//! server at a time. Requests a client pipelines behind it wait here, and a connection that
//! cannot take its replies is abandoned.
//!
//! Why: tiny_http writes a connection's replies in request order, so the thread answering a
//! pipelined request waits, with no time limit, until every earlier reply of that connection is
//! written. If several of one connection's requests reached the workers at once, a client that
//! pipelines and never reads would hold every worker, each waiting its turn to hit the send
//! timeout, and stall the whole server. Holding later requests back until the earlier reply is
//! written means a thread only ever waits on the socket itself, for one send timeout at most;
//! after that the connection is abandoned and its further requests are dropped unanswered.
//! What follows a request whose end was unclear is refused out loud instead, as long as the
//! client reads the refusals (see `Admit::Refuse`).
//!
//! The table is generic over what it holds, so its rules are tested without sockets.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::limits;

/// What to do with a request the acceptor has just routed.
pub enum Admit<T> {
    /// Nothing else of its connection is in flight: send it on now.
    Go(T),
    /// It waits behind its connection's request in flight; `finish` hands it back.
    Parked,
    /// Its connection is abandoned: drop these without a reply.
    Drop(Vec<T>, Option<Abandoned>),
    /// It arrived from the address of a connection abandoned for `FramingLost`, with nothing
    /// of that address in flight: answer it with a refusal, never serve it. It is now the
    /// request in flight, and `finish` is called for it as for any other.
    Refuse(T),
    /// Like `Drop` with no reason, but its address has now had more than
    /// `PIPELINED_PER_CONNECTION_MAX` requests dropped since it was abandoned or last hung up
    /// on: drop it, and hang up on the address (again).
    DropAndHangUp(T),
}

/// What to do after a connection's request in flight has been answered.
pub enum Finish<T> {
    /// The connection has nothing more waiting.
    Idle,
    /// Send this next request of the connection on; it is now the one in flight.
    Next(T),
    /// The connection is now abandoned: drop these waiting requests without a reply.
    Drop(Vec<T>, Abandoned),
}

/// Why a connection was abandoned, for the log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandoned {
    /// A reply could not be written within the send timeout: the client does not read.
    NotReading,
    /// More pipelined requests than `PIPELINED_PER_CONNECTION_MAX` waited behind the one in
    /// flight.
    PipelinedTooDeep,
    /// Waiting requests of all connections together numbered `PIPELINED_TOTAL_MAX` already, or
    /// this one's head would take them past `PIPELINED_HEAD_BYTES_MAX` bytes.
    PipelinedTotalFull,
    /// A request on it announced a body that is never read, so nothing more can follow.
    BodyUnread,
    /// A request on it did not say clearly where it ends, so what follows is not trusted.
    FramingLost,
}

impl Abandoned {
    pub fn as_str(self) -> &'static str {
        match self {
            Abandoned::NotReading => "not_reading",
            Abandoned::PipelinedTooDeep => "pipelined_too_deep",
            Abandoned::PipelinedTotalFull => "pipelined_total_full",
            Abandoned::BodyUnread => "body_unread",
            Abandoned::FramingLost => "framing_lost",
        }
    }
}

/// A client connection's address, with its hash: computed once when a request arrives, it
/// serves both of the table's lookups for that request. Ordered (by address first) only so
/// that `remember_abandoned` can break ties between equally quiet connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    addr: SocketAddr,
    /// The address hashed with SipHash under keys drawn at random once per process, so that
    /// clients, who choose their ports, cannot aim many connections at one bucket.
    digest: u64,
}

impl Peer {
    pub fn of(addr: SocketAddr) -> Peer {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        let digest = KEYS.get_or_init(RandomState::new).hash_one(addr);
        Peer { addr, digest }
    }

    /// The peer of `addr`, whose `digest` an earlier `Peer::of(addr)` gave: the caller keeps
    /// a request's digest with the request and passes that same request's address. A digest
    /// of another address would make `finish` miss the connection and panic.
    pub(crate) fn of_digest(addr: SocketAddr, digest: u64) -> Peer {
        let peer = Peer { addr, digest };
        debug_assert_eq!(peer, Peer::of(addr), "a digest kept for another address");
        peer
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// The shard that holds this peer. The table itself places entries by the digest's low
    /// bits and tells them apart by its top seven, so the shard is taken from bits in between:
    /// otherwise every entry of a shard would share the low bits and crowd into a fraction of
    /// the shard's buckets.
    fn shard(&self) -> usize {
        (self.digest >> 32) as usize % SHARDS
    }
}

impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// The table's hasher: it takes a `Peer`'s digest as the hash, since the digest is a keyed
/// hash already.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _: &[u8]) {
        unreachable!("the connection table hashes nothing but a Peer's digest");
    }

    fn write_u64(&mut self, digest: u64) {
        self.0 = digest;
    }
}

/// What a waiting request holds on to, for `PIPELINED_HEAD_BYTES_MAX`.
pub trait Weighed {
    /// The bytes of its head: target and header fields.
    fn head_bytes(&self) -> usize;
}

struct Connection<T> {
    /// One request of this connection is between admission and `finish`.
    in_flight: bool,
    /// Requests waiting behind the one in flight, with their head bytes.
    waiting: VecDeque<(T, usize)>,
    abandoned: Option<Abandonment>,
}

/// What the table remembers of an abandoned connection.
#[derive(Clone, Copy)]
struct Abandonment {
    reason: Abandoned,
    /// When it was abandoned, or last sent another request of unclear end: the watch on it
    /// ends `watch_max` after this, however busy it stays.
    since: Instant,
    /// When a request from its address last arrived.
    seen: Instant,
    /// Whether a refusal could not be written to it, so that nothing more is.
    silent: bool,
    /// Requests from its address dropped unanswered since it was abandoned or last hung up on.
    dropped: usize,
}

struct Shard<T> {
    connections: HashMap<Peer, Connection<T>, BuildHasherDefault<DigestHasher>>,
    /// Entries of `connections` that are abandoned.
    abandoned: usize,
    next_sweep: Instant,
}

pub struct Connections<T> {
    /// Sharded by client address, so the acceptor and the threads finishing requests rarely
    /// wait for each other.
    shards: Vec<Mutex<Shard<T>>>,
    /// Requests waiting in all connections together, and the bytes of their heads.
    waiting_total: AtomicUsize,
    waiting_head_bytes: AtomicUsize,
    /// An abandoned connection is forgotten once none of its requests arrived for this long:
    /// by then the idle timeout has closed it, and its address may be reused.
    forget_after: Duration,
    /// ... or once it has been watched this long, so that a client keeping its port for new
    /// connections is not refused for ever.
    watch_max: Duration,
}

/// Shards of the table; a small power of two is plenty for a handful of threads.
const SHARDS: usize = 16;

impl<T: Weighed> Connections<T> {
    pub fn new(forget_after: Duration, watch_max: Duration, now: Instant) -> Connections<T> {
        let shard = || {
            Mutex::new(Shard {
                connections: HashMap::default(),
                abandoned: 0,
                next_sweep: now + forget_after,
            })
        };
        Connections {
            shards: (0..SHARDS).map(|_| shard()).collect(),
            waiting_total: AtomicUsize::new(0),
            waiting_head_bytes: AtomicUsize::new(0),
            forget_after,
            watch_max,
        }
    }

    fn shard(&self, peer: Peer) -> std::sync::MutexGuard<'_, Shard<T>> {
        // A panic while holding the lock aborts the process (see the panic hook), so a
        // poisoned lock is never observed by a live server.
        self.shards[peer.shard()]
            .lock()
            .expect("connection table lock")
    }

    /// Admits a request of the connection from `peer`.
    pub fn admit(&self, peer: Peer, request: T, now: Instant) -> Admit<T> {
        let mut shard = self.shard(peer);
        if now >= shard.next_sweep {
            self.sweep(&mut shard, now);
        }
        let connection = match shard.connections.entry(peer) {
            Entry::Vacant(vacant) => {
                vacant.insert(Connection {
                    in_flight: true,
                    waiting: VecDeque::new(),
                    abandoned: None,
                });
                return Admit::Go(request);
            }
            Entry::Occupied(occupied) => occupied.into_mut(),
        };
        if let Some(abandonment) = connection.abandoned.as_mut() {
            abandonment.seen = now;
            // What follows a request whose end was unclear is never served, but it is refused
            // out loud: the table knows addresses, not connections, and the client's next
            // connection may reuse the address (loopback and NAT reuse ports within seconds)
            // before the entry is forgotten. A refusal tells that client to retry, where
            // silence would leave it waiting. One whose refusal cannot be written is dropped
            // silently from then on (see `finish`), so it costs a thread one send timeout at
            // most, like any connection.
            if abandonment.reason == Abandoned::FramingLost
                && !abandonment.silent
                && !connection.in_flight
            {
                connection.in_flight = true;
                return Admit::Refuse(request);
            }
            // tiny_http parses and queues whatever a client sends, without a bound, and only a
            // hang-up stops it reading. A connection abandoned for its framing is not hung up
            // on, so that its refusals can be written, and a new connection may reuse the
            // address of one that was; either can pipeline a flood whose every request lands
            // here. Counting them bounds the flood as `PIPELINED_PER_CONNECTION_MAX` bounds an
            // ordinary connection's.
            abandonment.dropped += 1;
            if abandonment.dropped > limits::PIPELINED_PER_CONNECTION_MAX {
                abandonment.dropped = 0;
                return Admit::DropAndHangUp(request);
            }
            return Admit::Drop(vec![request], None);
        }
        if !connection.in_flight {
            connection.in_flight = true;
            return Admit::Go(request);
        }
        let bytes = request.head_bytes();
        let reason = if connection.waiting.len() >= limits::PIPELINED_PER_CONNECTION_MAX {
            Abandoned::PipelinedTooDeep
        } else if self.waiting_total.fetch_add(1, Ordering::Relaxed) >= limits::PIPELINED_TOTAL_MAX
        {
            self.waiting_total.fetch_sub(1, Ordering::Relaxed);
            Abandoned::PipelinedTotalFull
        } else if self.waiting_head_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes
            > limits::PIPELINED_HEAD_BYTES_MAX
        {
            self.waiting_head_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.waiting_total.fetch_sub(1, Ordering::Relaxed);
            Abandoned::PipelinedTotalFull
        } else {
            connection.waiting.push_back((request, bytes));
            return Admit::Parked;
        };
        let mut dropped = self.abandon(connection, reason, now);
        dropped.push(request);
        Self::remember_abandoned(&mut shard, peer);
        Admit::Drop(dropped, Some(reason))
    }

    /// Whether the connection from `peer` has a request in flight and nothing waiting behind
    /// it, and is not abandoned: a client waiting for the reply to what it sent.
    pub fn settled(&self, peer: Peer) -> bool {
        self.shard(peer)
            .connections
            .get(&peer)
            .is_some_and(|c| c.in_flight && c.waiting.is_empty() && c.abandoned.is_none())
    }

    /// Records that the request in flight of `peer` has been answered: `Ok` when its reply was
    /// written, else why the connection is to be abandoned.
    pub fn finish(&self, peer: Peer, answered: Result<(), Abandoned>, now: Instant) -> Finish<T> {
        let mut shard = self.shard(peer);
        // One lookup serves both what follows and the removal at the end, which an idle
        // connection needs after every request.
        let Entry::Occupied(mut entry) = shard.connections.entry(peer) else {
            panic!("finish for {}, which has no request in flight", peer.addr);
        };
        let connection = entry.get_mut();
        assert!(
            connection.in_flight,
            "finish for {} without a request in flight",
            peer.addr
        );
        if let Some(abandonment) = connection.abandoned.as_mut() {
            connection.in_flight = false;
            match answered {
                Ok(()) => {}
                // The refused request's own end was unclear too: what follows it is the
                // client's next request, or its body, so the watch starts over.
                Err(Abandoned::FramingLost) => {
                    abandonment.since = now;
                    abandonment.seen = now;
                }
                // A refusal that could not be written: the client does not read, so nothing
                // more is written to it, and it is reported like any connection that stops.
                Err(failed) if !abandonment.silent => {
                    abandonment.silent = true;
                    return Finish::Drop(Vec::new(), failed);
                }
                Err(_) => {}
            }
            return Finish::Idle;
        }
        if let Err(reason) = answered {
            connection.in_flight = false;
            let dropped = self.abandon(connection, reason, now);
            Self::remember_abandoned(&mut shard, peer);
            return Finish::Drop(dropped, reason);
        }
        if let Some((next, bytes)) = connection.waiting.pop_front() {
            self.waiting_total.fetch_sub(1, Ordering::Relaxed);
            self.waiting_head_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Finish::Next(next);
        }
        entry.remove();
        Finish::Idle
    }

    fn abandon(&self, connection: &mut Connection<T>, reason: Abandoned, now: Instant) -> Vec<T> {
        connection.abandoned = Some(Abandonment {
            reason,
            since: now,
            seen: now,
            silent: false,
            dropped: 0,
        });
        self.waiting_total
            .fetch_sub(connection.waiting.len(), Ordering::Relaxed);
        let bytes: usize = connection.waiting.iter().map(|(_, bytes)| bytes).sum();
        self.waiting_head_bytes.fetch_sub(bytes, Ordering::Relaxed);
        // Taken, not drained: a drained queue keeps its room, up to 128 requests of about 240
        // bytes, for as long as the address is remembered, and 65,536 of them would hold
        // nearly 2 GiB. Nothing waits on an abandoned connection again.
        std::mem::take(&mut connection.waiting)
            .into_iter()
            .map(|(request, _)| request)
            .collect()
    }

    /// Counts `peer`, just abandoned, in its shard. Past the shard's share of
    /// `ABANDONED_REMEMBERED_MAX`, forgets abandoned connections early, down to three quarters
    /// of the share in one pass so that the pass is rare: the quietest first, and those
    /// abandoned for an unclear request end last, since forgetting those early is what could
    /// let a request smuggled on them be served. Never `peer`, nor one with a request in
    /// flight. A flood of abandoned connections then costs bounded memory and time.
    fn remember_abandoned(shard: &mut Shard<T>, peer: Peer) {
        let share = limits::ABANDONED_REMEMBERED_MAX / SHARDS;
        shard.abandoned += 1;
        if shard.abandoned <= share {
            return;
        }
        let mut evictable: Vec<_> = shard
            .connections
            .iter()
            .filter(|(addr, c)| **addr != peer && !c.in_flight)
            .filter_map(|(addr, c)| {
                let a = c.abandoned?;
                Some(((a.reason == Abandoned::FramingLost, a.seen), *addr))
            })
            .collect();
        let excess = (shard.abandoned - share * 3 / 4).min(evictable.len());
        if excess == 0 {
            return;
        }
        evictable.select_nth_unstable(excess - 1);
        for (_, addr) in &evictable[..excess] {
            shard.connections.remove(addr);
        }
        shard.abandoned -= excess;
        // Removal leaves tombstones that would grow the table on later inserts; the pass has
        // visited every entry already, so rebuilding it at the share's size costs little more.
        shard.connections.shrink_to(share);
    }

    /// Forgets abandoned connections not heard from for `forget_after`, or watched for
    /// `watch_max`.
    fn sweep(&self, shard: &mut Shard<T>, now: Instant) {
        let (forget_after, watch_max) = (self.forget_after, self.watch_max);
        let Shard {
            connections,
            abandoned,
            ..
        } = shard;
        connections.retain(|_, c| {
            let forget = !c.in_flight
                && c.abandoned
                    .is_some_and(|a| now - a.seen >= forget_after || now - a.since >= watch_max);
            *abandoned -= usize::from(forget);
            !forget
        });
        // Give back what a flood grew the table to, once it has passed.
        if connections.capacity() > 4 * connections.len().max(64) {
            connections.shrink_to(2 * connections.len());
        }
        shard.next_sweep = now + forget_after;
    }

    /// Requests parked behind the one in flight on their connection, across all connections.
    pub fn waiting(&self) -> usize {
        self.waiting_total.load(Ordering::Relaxed)
    }

    /// Connections with a request in flight or abandoned and not yet forgotten.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("connection table lock").connections.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Peer {
        Peer::of(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// `count` clients whose addresses all fall in shard 0.
    fn clients_of_shard_zero(count: usize) -> Vec<Peer> {
        let clients: Vec<Peer> = (1..=4)
            .flat_map(|host| (0..=u16::MAX).map(move |port| ([10, 0, 0, host], port)))
            .map(|addr| Peer::of(SocketAddr::from(addr)))
            .filter(|peer| peer.shard() == 0)
            .take(count)
            .collect();
        assert_eq!(clients.len(), count, "enough ports hash to one shard");
        clients
    }

    fn table() -> (Connections<u32>, Instant) {
        table_of()
    }

    fn table_of<T: Weighed>() -> (Connections<T>, Instant) {
        let now = Instant::now();
        let (forget_after, watch_max) = (Duration::from_secs(30), Duration::from_secs(120));
        (Connections::new(forget_after, watch_max, now), now)
    }

    /// Most tests' requests are numbers, which weigh nothing.
    impl Weighed for u32 {
        fn head_bytes(&self) -> usize {
            0
        }
    }

    /// A request with a head of this many bytes.
    #[derive(Debug, PartialEq)]
    struct Head(usize);

    impl Weighed for Head {
        fn head_bytes(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn the_heads_of_waiting_requests_are_bounded_in_bytes_across_connections() {
        let (table, now) = table_of::<Head>();
        let size = limits::PIPELINED_HEAD_BYTES_MAX / 100;
        // One large head waits behind each connection's request in flight, until the bytes
        // are used up; the count of waiting requests is far from its own bound.
        let mut parked = 0;
        let full = loop {
            let client = peer(parked + 1);
            assert!(matches!(table.admit(client, Head(0), now), Admit::Go(_)));
            match table.admit(client, Head(size), now) {
                Admit::Parked => parked += 1,
                Admit::Drop(dropped, Some(Abandoned::PipelinedTotalFull)) => {
                    assert_eq!(dropped, vec![Head(size)]);
                    break client;
                }
                _ => panic!("expected it parked or refused for the bytes"),
            }
        };
        assert_eq!(usize::from(parked), 100);
        assert!(
            table.waiting_head_bytes.load(Ordering::Relaxed) <= limits::PIPELINED_HEAD_BYTES_MAX
        );
        // A small head still fits, and the bytes come back as waiting requests go on.
        assert!(matches!(table.admit(peer(1), Head(1), now), Admit::Parked));
        assert!(matches!(table.finish(full, Ok(()), now), Finish::Idle));
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Next(Head(s)) if s == size));
        assert!(matches!(
            table.finish(peer(1), Ok(()), now),
            Finish::Next(Head(1))
        ));
        assert!(matches!(
            table.admit(peer(1), Head(size), now),
            Admit::Parked
        ));
        // Abandoning a connection gives back the bytes of what waited on it.
        let _ = table.finish(peer(2), Err(Abandoned::NotReading), now);
        for client in (1..=parked).filter(|&client| client != 2) {
            let _ = table.finish(peer(client), Ok(()), now);
        }
        let _ = table.finish(peer(1), Ok(()), now);
        assert_eq!(table.waiting_head_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(table.waiting_total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn requests_of_one_connection_go_one_at_a_time_in_order() {
        let (table, now) = table();
        assert!(matches!(table.admit(peer(1), 1, now), Admit::Go(1)));
        assert!(matches!(table.admit(peer(1), 2, now), Admit::Parked));
        assert!(matches!(table.admit(peer(1), 3, now), Admit::Parked));
        // Another connection is not held up.
        assert!(matches!(table.admit(peer(2), 10, now), Admit::Go(10)));
        assert!(matches!(
            table.finish(peer(1), Ok(()), now),
            Finish::Next(2)
        ));
        assert!(matches!(
            table.finish(peer(1), Ok(()), now),
            Finish::Next(3)
        ));
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Idle));
        assert!(matches!(table.finish(peer(2), Ok(()), now), Finish::Idle));
        assert_eq!(table.tracked(), 0, "idle connections are not kept");
        assert!(matches!(table.admit(peer(1), 4, now), Admit::Go(4)));
    }

    #[test]
    fn only_a_connection_with_just_a_request_in_flight_is_settled() {
        let (table, now) = table();
        assert!(
            !table.settled(peer(1)),
            "unknown: its request may still be queued"
        );
        assert!(matches!(table.admit(peer(1), 1, now), Admit::Go(1)));
        assert!(table.settled(peer(1)));
        assert!(matches!(table.admit(peer(1), 2, now), Admit::Parked));
        assert!(!table.settled(peer(1)), "it pipelines");
        assert!(matches!(
            table.finish(peer(1), Ok(()), now),
            Finish::Next(2)
        ));
        assert!(table.settled(peer(1)));
        let _ = table.finish(peer(1), Err(Abandoned::NotReading), now);
        assert!(!table.settled(peer(1)), "abandoned");
        assert!(matches!(table.admit(peer(2), 3, now), Admit::Go(3)));
        assert!(matches!(table.finish(peer(2), Ok(()), now), Finish::Idle));
        assert!(!table.settled(peer(2)), "idle: nothing of it is in flight");
    }

    #[test]
    fn a_failed_write_abandons_the_connection_and_drops_what_waits() {
        let (table, now) = table();
        let _ = table.admit(peer(1), 1, now);
        let _ = table.admit(peer(1), 2, now);
        let _ = table.admit(peer(1), 3, now);
        match table.finish(peer(1), Err(Abandoned::NotReading), now) {
            Finish::Drop(dropped, Abandoned::NotReading) => assert_eq!(dropped, vec![2, 3]),
            _ => panic!("expected the waiting requests to be dropped"),
        }
        // Later requests of the abandoned connection are dropped too, silently.
        assert!(matches!(table.admit(peer(1), 4, now), Admit::Drop(d, None) if d == vec![4]));
        assert_eq!(table.waiting_total.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_flood_on_an_abandoned_address_is_hung_up_on_every_pipelining_bound() {
        let (table, now) = table();
        let max = limits::PIPELINED_PER_CONNECTION_MAX as u32;
        // Abandoned for its framing, so not hung up on: what it pipelines behind the refusal
        // in flight is dropped, and past the bound the address is hung up on.
        let _ = table.admit(peer(1), 0, now);
        let _ = table.finish(peer(1), Err(Abandoned::FramingLost), now);
        assert!(matches!(table.admit(peer(1), 0, now), Admit::Refuse(0)));
        // Abandoned for not reading, and hung up on then: a new connection on its address
        // floods.
        let _ = table.admit(peer(2), 0, now);
        let _ = table.finish(peer(2), Err(Abandoned::NotReading), now);
        for client in [peer(1), peer(2)] {
            for round in 0..3 {
                for n in 1..=max {
                    let admitted = table.admit(client, n, now);
                    assert!(
                        matches!(admitted, Admit::Drop(ref d, None) if *d == vec![n]),
                        "{client:?}: request {n} of round {round} is only dropped"
                    );
                }
                let admitted = table.admit(client, max + 1, now);
                assert!(
                    matches!(admitted, Admit::DropAndHangUp(m) if m == max + 1),
                    "{client:?}: round {round} ends in a hang-up"
                );
            }
        }
        // A refusal written does not reset the count: a client that reads them cannot hide a
        // flood between them.
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Idle));
        assert!(matches!(table.admit(peer(1), 0, now), Admit::Refuse(0)));
        for n in 1..=max {
            assert!(matches!(table.admit(peer(1), n, now), Admit::Drop(..)));
        }
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Idle));
        assert!(matches!(table.admit(peer(1), 0, now), Admit::Refuse(0)));
        assert!(matches!(
            table.admit(peer(1), 1, now),
            Admit::DropAndHangUp(1)
        ));
    }

    #[test]
    fn an_abandoned_connection_is_forgotten_once_it_stays_quiet() {
        let (table, now) = table();
        let _ = table.admit(peer(1), 1, now);
        let _ = table.finish(peer(1), Err(Abandoned::NotReading), now);
        let later = now + Duration::from_secs(20);
        // Still heard from: stays abandoned, and the clock restarts.
        assert!(matches!(table.admit(peer(1), 2, later), Admit::Drop(..)));
        let quiet = later + Duration::from_secs(31);
        // The sweep runs on any admission to the shard; the address is then new again.
        assert!(matches!(table.admit(peer(1), 3, quiet), Admit::Go(3)));
    }

    #[test]
    fn what_follows_a_request_of_unclear_end_is_refused_one_at_a_time() {
        let (table, now) = table();
        let _ = table.admit(peer(1), 1, now);
        let _ = table.admit(peer(1), 2, now);
        match table.finish(peer(1), Err(Abandoned::FramingLost), now) {
            Finish::Drop(dropped, Abandoned::FramingLost) => assert_eq!(dropped, vec![2]),
            _ => panic!("expected what waited to be dropped"),
        }
        // The next request from the address is refused, never served; while that refusal is
        // in flight, more requests from it are dropped.
        assert!(matches!(table.admit(peer(1), 3, now), Admit::Refuse(3)));
        assert!(matches!(table.admit(peer(1), 4, now), Admit::Drop(d, None) if d == vec![4]));
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Idle));
        assert!(matches!(table.admit(peer(1), 5, now), Admit::Refuse(5)));
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Idle));
        // Other reasons stay silent: writing to a client that does not read would block.
        let _ = table.admit(peer(2), 1, now);
        let _ = table.finish(peer(2), Err(Abandoned::NotReading), now);
        assert!(matches!(table.admit(peer(2), 2, now), Admit::Drop(..)));
        // Once the address is quiet for the forget period, it is served again.
        let quiet = now + Duration::from_secs(31);
        assert!(matches!(table.admit(peer(1), 6, quiet), Admit::Go(6)));
    }

    #[test]
    fn clients_on_one_port_fill_every_shard() {
        // Sharding by port, as the table once did, would put all of these in one shard.
        let mut per_shard = [0usize; SHARDS];
        for host in 0..32_768u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + host); // 10.0.0.0 and on
            per_shard[Peer::of(SocketAddr::from((ip, 4321))).shard()] += 1;
        }
        let expected = 32_768 / SHARDS;
        assert!(
            per_shard
                .iter()
                .all(|&n| n > expected * 8 / 10 && n < expected * 12 / 10),
            "{per_shard:?}"
        );
    }

    #[test]
    fn abandoned_connections_remembered_at_once_are_bounded() {
        let (table, now) = table();
        let share = limits::ABANDONED_REMEMBERED_MAX / SHARDS;
        let clients = clients_of_shard_zero(share + 1);
        let client = |i: usize| clients[i];
        // The first client's connection lost its framing; the rest stopped reading.
        for i in 0..=share {
            let at = now + Duration::from_millis(i as u64);
            let reason = if i == 0 {
                Abandoned::FramingLost
            } else {
                Abandoned::NotReading
            };
            let _ = table.admit(client(i), 1, at);
            let _ = table.finish(client(i), Err(reason), at);
        }
        // One past the share forgets a quarter of it at once, the quietest first, but keeps
        // the one whose framing was lost although it is the quietest of all.
        assert_eq!(table.tracked(), share * 3 / 4);
        let forgotten = share + 1 - share * 3 / 4;
        {
            let shard = table.shard(client(0));
            for i in 1..=share {
                assert_eq!(
                    shard.connections.contains_key(&client(i)),
                    i > forgotten,
                    "client {i}: the {forgotten} quietest are forgotten, the rest kept"
                );
            }
        }
        assert!(matches!(table.admit(client(0), 2, now), Admit::Refuse(2)));
        assert!(matches!(table.finish(client(0), Ok(()), now), Finish::Idle));
        assert!(matches!(table.admit(client(1), 2, now), Admit::Go(2)));
        assert!(matches!(table.finish(client(1), Ok(()), now), Finish::Idle));
        assert!(matches!(
            table.admit(client(share), 2, now),
            Admit::Drop(..)
        ));
        // The sweep forgets the rest, and the count of abandoned entries follows.
        let quiet = now + Duration::from_secs(90);
        assert!(matches!(table.admit(client(1), 3, quiet), Admit::Go(3)));
        assert_eq!(table.tracked(), 1);
        let shard = table.shard(client(1));
        assert_eq!(shard.abandoned, 0);
        // The next sweep is one forget period away: sweeping on every admission would cost
        // a pass over the shard per request.
        assert_eq!(shard.next_sweep, quiet + Duration::from_secs(30));
        assert!(shard.connections.capacity() < 1024, "the table shrank back");
    }

    /// Abandons `client` for its framing, and puts the refusal of its next request in flight.
    fn refusing(table: &Connections<u32>, client: Peer, at: Instant) {
        let _ = table.admit(client, 1, at);
        let _ = table.finish(client, Err(Abandoned::FramingLost), at);
        assert!(matches!(table.admit(client, 2, at), Admit::Refuse(2)));
    }

    #[test]
    fn past_the_share_with_fewer_to_forget_than_the_excess_all_of_those_are_forgotten() {
        let (table, now) = table();
        let share = limits::ABANDONED_REMEMBERED_MAX / SHARDS;
        let clients = clients_of_shard_zero(share + 1);
        // Two connections stopped reading and may be forgotten; every other one lost its
        // framing and has its refusal in flight, so it may not. One past the share asks for
        // a quarter to go, and only those two can: the pass forgets exactly them.
        for (i, &client) in clients.iter().enumerate() {
            let at = now + Duration::from_millis(i as u64);
            if i < 2 {
                let _ = table.admit(client, 1, at);
                let _ = table.finish(client, Err(Abandoned::NotReading), at);
            } else {
                refusing(&table, client, at);
            }
        }
        assert_eq!(table.tracked(), share - 1);
        let shard = table.shard(clients[0]);
        assert!(!shard.connections.contains_key(&clients[0]));
        assert!(!shard.connections.contains_key(&clients[1]));
    }

    #[test]
    fn waiting_heads_may_fill_the_byte_bound_exactly_and_no_further() {
        let (table, now) = table_of::<Head>();
        let max = limits::PIPELINED_HEAD_BYTES_MAX;
        for (port, size) in [(1, max - 10), (2, 10)] {
            assert!(matches!(
                table.admit(peer(port), Head(0), now),
                Admit::Go(_)
            ));
            assert!(matches!(
                table.admit(peer(port), Head(size), now),
                Admit::Parked
            ));
        }
        assert_eq!(table.waiting_head_bytes.load(Ordering::Relaxed), max);
        assert!(matches!(table.admit(peer(3), Head(0), now), Admit::Go(_)));
        assert!(matches!(
            table.admit(peer(3), Head(1), now),
            Admit::Drop(_, Some(Abandoned::PipelinedTotalFull))
        ));
    }

    #[test]
    fn connections_with_a_refusal_in_flight_are_never_forgotten_early() {
        let (table, now) = table();
        let share = limits::ABANDONED_REMEMBERED_MAX / SHARDS;
        let clients = clients_of_shard_zero(share + 1);
        // Every connection lost its framing, and each has its refusal in flight when the
        // next is abandoned: past the share, none of them may be forgotten, since finishing
        // the refusal needs the entry.
        for (i, &client) in clients.iter().enumerate() {
            refusing(&table, client, now + Duration::from_millis(i as u64));
        }
        assert_eq!(table.tracked(), share + 1);
        for &client in &clients {
            assert!(matches!(table.finish(client, Ok(()), now), Finish::Idle));
        }
    }

    #[test]
    fn the_table_hashes_a_peer_by_its_digest() {
        // A constant hash would keep the table correct but make every lookup a walk of the
        // shard: a flood of remembered connections would then cost quadratic time.
        let hasher = BuildHasherDefault::<DigestHasher>::default();
        for port in [1, 2, 40_000] {
            assert_eq!(hasher.hash_one(peer(port)), peer(port).digest());
        }
    }

    #[test]
    fn a_refusal_the_client_does_not_read_silences_the_address() {
        let (table, now) = table();
        let _ = table.admit(peer(1), 1, now);
        let _ = table.finish(peer(1), Err(Abandoned::FramingLost), now);
        assert!(matches!(table.admit(peer(1), 2, now), Admit::Refuse(2)));
        // Reported once, like any connection that stops reading.
        assert!(matches!(
            table.finish(peer(1), Err(Abandoned::NotReading), now),
            Finish::Drop(d, Abandoned::NotReading) if d.is_empty()
        ));
        // Nothing more is written to it: its requests are dropped, not refused.
        assert!(matches!(table.admit(peer(1), 3, now), Admit::Drop(d, None) if d == vec![3]));
    }

    #[test]
    fn a_busy_address_is_watched_until_the_watch_ends() {
        let (table, now) = table();
        let _ = table.admit(peer(1), 1, now);
        let _ = table.finish(peer(1), Err(Abandoned::FramingLost), now);
        let at = |secs| now + Duration::from_secs(secs);
        // The client goes on every 20 s up to 100 s, refused each time; the last refused
        // request is answered `last`.
        let go_on = |port, last: Result<(), Abandoned>| {
            for secs in [20, 40, 60, 80, 100] {
                assert!(matches!(
                    table.admit(peer(port), 2, at(secs)),
                    Admit::Refuse(2)
                ));
                let answered = if secs == 100 { last } else { Ok(()) };
                let _ = table.finish(peer(port), answered, at(secs));
            }
        };
        // Refused past the forget period (30 s here)...
        go_on(1, Ok(()));
        // ... until the watch (120 s here) ends: a client that keeps its port is served.
        assert!(matches!(table.admit(peer(1), 3, at(120)), Admit::Go(3)));
        let _ = table.finish(peer(1), Ok(()), at(120));
        // A refused request whose own end is unclear starts the watch over.
        let _ = table.admit(peer(2), 1, now);
        let _ = table.finish(peer(2), Err(Abandoned::FramingLost), now);
        go_on(2, Err(Abandoned::FramingLost));
        assert!(matches!(table.admit(peer(2), 3, at(125)), Admit::Refuse(3)));
    }

    #[test]
    fn pipelining_past_the_bound_abandons_the_connection() {
        let (table, now) = table();
        let _ = table.admit(peer(1), 0, now);
        for i in 1..=limits::PIPELINED_PER_CONNECTION_MAX as u32 {
            assert!(matches!(table.admit(peer(1), i, now), Admit::Parked));
        }
        match table.admit(peer(1), 999, now) {
            Admit::Drop(dropped, Some(Abandoned::PipelinedTooDeep)) => {
                assert_eq!(dropped.len(), limits::PIPELINED_PER_CONNECTION_MAX + 1);
                assert_eq!(dropped.last(), Some(&999));
            }
            _ => panic!("expected the connection to be abandoned"),
        }
        // The request in flight still completes; nothing more follows it.
        assert!(matches!(table.finish(peer(1), Ok(()), now), Finish::Idle));
        assert_eq!(table.waiting_total.load(Ordering::Relaxed), 0);
        // The address is remembered, but not the room its queue grew to.
        let shard = table.shard(peer(1));
        let remembered = shard.connections.get(&peer(1)).expect("remembered");
        assert!(remembered.abandoned.is_some());
        assert_eq!(remembered.waiting.capacity(), 0);
    }

    #[test]
    fn waiting_requests_are_bounded_across_connections() {
        let (table, now) = table();
        let per = limits::PIPELINED_PER_CONNECTION_MAX;
        let connections = limits::PIPELINED_TOTAL_MAX.div_ceil(per) + 1;
        let mut abandoned = 0;
        for c in 0..connections as u16 {
            let _ = table.admit(peer(c + 1), 0, now);
            for i in 0..per as u32 {
                if let Admit::Drop(_, Some(Abandoned::PipelinedTotalFull)) =
                    table.admit(peer(c + 1), i, now)
                {
                    abandoned += 1;
                    break;
                }
            }
        }
        assert!(abandoned > 0);
        assert!(table.waiting_total.load(Ordering::Relaxed) <= limits::PIPELINED_TOTAL_MAX);
    }

    #[test]
    #[should_panic(expected = "no request in flight")]
    fn finishing_a_connection_with_nothing_in_flight_is_a_bug() {
        let (table, now) = table();
        let _ = table.finish(peer(1), Ok(()), now);
    }
}
