//! One Socket.IO client: an Engine.IO session (long-polling, WebSocket, or
//! polling upgraded to WebSocket) carrying Socket.IO packets, served by one
//! task with one `select!`, on the same rooms core, auth and limits as the
//! native protocol (through [`Client`]).
//!
//! A session opened over WebSocket is written like a native connection:
//! its room events are written into its [`Outbound`] queue by the rooms
//! core's fan-out thread, encoded once per event for every such client, and
//! never pass through this task; its own packets go through the same queue.
//! A session upgraded from polling keeps its queue, as polling does.
//!
//! HTTP requests of the polling transport do not touch the session's state:
//! they hand it [`Inbound`] messages and wait for its answer. While polling,
//! room events are taken from the client's bounded queue only when a GET is
//! waiting for them, so a client that stops polling overflows that queue and
//! is closed like any slow consumer.

use std::collections::VecDeque;
use std::future::pending;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval_at, sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::engineio::{self, Packet};
use super::packet::{self as socketio, ClientPacket};
use super::registry::{Inbound, PollAnswer, Registration};
use crate::auth::TokenError;
use crate::core::event::{Framing, RoomEvent};
use crate::metrics::ReasonLabel;
use crate::net::slots::ClientSlot;
use crate::transport::budget::Exhausted;
use crate::transport::client::{Client, RequestKind, TokenTimer};
use crate::transport::outbound::{DirectSocket, Outbound};
use crate::transport::requests::{self, ErrorCode, ProtocolError};
use crate::transport::sessions::Sessions;
use crate::transport::websocket::{close, text_frame, CloseReason, Socket, Violation};

/// An encoded packet: UTF-8 text, which a WebSocket write takes as it is.
type TextFrame = Utf8Bytes;

/// A session's sid, and whether requests can name it.
#[derive(Debug)]
pub enum SessionId {
    /// A polling session, in the registry while it lives.
    Registered(Registration),
    /// Opened over WebSocket, or no longer reachable by sid.
    Unregistered(String),
}

impl SessionId {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Registered(registration) => registration.sid(),
            Self::Unregistered(sid) => sid,
        }
    }

    /// Leaves the registry (before the transport's possibly slow close).
    fn deregister(&mut self) {
        if let Self::Registered(registration) = self {
            *self = Self::Unregistered(registration.sid().to_owned());
        }
    }
}

/// A room event in Socket.IO's framing, encoded once per event.
fn room_event_text(event: &RoomEvent) -> Option<TextFrame> {
    let text = event.encoded(Framing::SocketIo, socketio::encode_room_event);
    // Always UTF-8 (the encoder writes a `String`); checked, not assumed.
    TextFrame::try_from(text).ok()
}

/// Room events taken per poll answer or WebSocket flush.
const MAX_EVENTS_PER_WRITE: usize = 64;

/// Why a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed the session (Engine.IO close) or disconnected
    /// (Socket.IO DISCONNECT): a WebSocket gets its Close frame (1000).
    ClientLeft,
    /// The connection is gone (closed or failed under us): nothing to send.
    TransportGone,
    /// We close it, with this reason.
    Closed(CloseReason),
    /// No pong within the ping timeout.
    PingTimeout,
}

/// The client broke the protocol: the connection (Socket.IO) or session
/// (Engine.IO) is closed, as the specifications say.
fn violation(violation: Violation) -> End {
    End::Closed(CloseReason::Violation(violation))
}

enum Transport {
    Polling,
    /// Upgraded from polling: events come through the client's queue.
    WebSocket(Box<Socket>),
    /// Opened over WebSocket: events are written into `outbound` by the
    /// fan-out thread; this task writes only its own packets there.
    Direct {
        socket: Box<DirectSocket>,
        outbound: Arc<Outbound>,
    },
}

pub struct EngineSession {
    sessions: Sessions,
    id: SessionId,
    /// Requests that name this session's sid (polling, the upgrade probe);
    /// `None` for a session opened over WebSocket, which takes none (as in
    /// engine.io) and so carries no channel.
    inbound: Option<mpsc::Receiver<Inbound>>,
    transport: Transport,
    /// A WebSocket being probed for the upgrade, and whether `2probe` was answered.
    probe: Option<(Box<Socket>, bool)>,
    /// Encoded packets waiting for a polling GET.
    outbox: VecDeque<TextFrame>,
    waiting_poll: Option<oneshot::Sender<PollAnswer>>,
    /// Present once the client connected to the main namespace.
    client: Option<Client>,
    query_token: Option<String>,
    pong_deadline: Option<Instant>,
    /// Set when the server disconnected the client (its token ran out):
    /// the session ends, for this reason, once the DISCONNECT is sent.
    disconnecting: Option<CloseReason>,
    /// Binary attachments still to come of a refused binary packet: they
    /// belong to it and are dropped without a second error.
    skip_attachments: usize,
    _slot: ClientSlot,
}

impl EngineSession {
    pub fn new(
        sessions: Sessions,
        id: SessionId,
        inbound: Option<mpsc::Receiver<Inbound>>,
        websocket: Option<DirectSocket>,
        query_token: Option<String>,
        slot: ClientSlot,
    ) -> Self {
        Self {
            sessions,
            id,
            inbound,
            transport: websocket.map_or(Transport::Polling, |socket| Transport::Direct {
                outbound: socket.get_ref().outbound().clone(),
                socket: Box::new(socket),
            }),
            probe: None,
            outbox: VecDeque::new(),
            waiting_poll: None,
            client: None,
            query_token,
            pong_deadline: None,
            disconnecting: None,
            skip_attachments: 0,
            _slot: slot,
        }
    }

    /// Serves the session until it ends; `open` is the handshake packet,
    /// already sent for polling, sent here first for WebSocket.
    ///
    /// A plain function returning an `async move` block: an `async fn`
    /// taking `mut self` would keep `self` twice in every session's future.
    pub fn run(self, open: String) -> impl std::future::Future<Output = ()> {
        let mut session = self;
        if let Transport::Direct { .. } = session.transport {
            session.queue(TextFrame::from(open));
        }
        async move {
            // The first flush and the close are boxed: they happen once, and
            // the future is as large as its largest await point.
            let end = match Box::pin(session.flush()).await {
                Ok(()) => session.serve().await,
                Err(end) => Err(end),
            };
            tracing::debug!(?end, "socket.io session ended");
            if let Err(End::Closed(reason)) = end {
                session.count_protocol_close(reason);
            }
            if let Some(client) = &mut session.client {
                client.leave_all();
            }
            session.id.deregister();
            Box::pin(session.close_transport(end)).await;
        }
    }

    async fn serve(&mut self) -> Result<(), End> {
        let socketio = self.sessions.socketio();
        let mut ping = interval_at(
            Instant::now() + socketio.ping_interval,
            socketio.ping_interval,
        );
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let connect_deadline = Instant::now() + socketio.connect_timeout;
        // Created once, not per loop turn (see native/session.rs).
        let shutdown_token = self.sessions.shutdown().clone();
        let mut shutdown = std::pin::pin!(shutdown_token.cancelled());
        // The client's overflow signal exists once the client has connected;
        // its future is then created once, not per loop turn (see native/session.rs).
        let mut overflowed: Option<
            std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
        > = None;
        // A direct session's queue, which the fan-out thread fills.
        let direct = match &self.transport {
            Transport::Direct { outbound, .. } => Some(outbound.clone()),
            _ => None,
        };
        loop {
            if let Some(reason) = self.disconnecting.filter(|_| self.outbox.is_empty()) {
                return Err(End::Closed(reason));
            }
            if overflowed.is_none() {
                overflowed = self.client.as_mut().map(|client| {
                    Box::pin(client.subscriber().overflowed().clone().cancelled_owned())
                });
            }
            let can_deliver =
                !matches!(self.transport, Transport::Polling) || self.waiting_poll.is_some();
            let pong_deadline = self.pong_deadline;
            let token_check_at = match self.disconnecting {
                None => self.client.as_ref().and_then(Client::token_check_at),
                Some(_) => None,
            };
            let connect_by = self.client.is_none().then_some(connect_deadline);
            tokio::select! {
                biased;
                () = &mut shutdown => return Err(End::Closed(CloseReason::Shutdown)),
                () = async { match overflowed.as_mut() { Some(wait) => wait.await, None => pending().await } } => {
                    return Err(End::Closed(CloseReason::SlowConsumer));
                }
                () = async { match pong_deadline { Some(at) => sleep_until(at).await, None => pending().await } } => {
                    return Err(End::PingTimeout);
                }
                () = async { match token_check_at { Some(at) => sleep_until(at).await, None => pending().await } } => {
                    self.on_token_timer();
                }
                // As the reference server's connectTimeout: a client that
                // only answers pings would hold its slot for ever.
                () = async { match connect_by { Some(at) => sleep_until(at).await, None => pending().await } } => {
                    return Err(End::Closed(CloseReason::ConnectTimeout));
                }

                _ = ping.tick() => {
                    self.queue(TextFrame::from(Packet::Ping("").encode()));
                    if self.pong_deadline.is_none() {
                        self.pong_deadline = Some(Instant::now() + self.sessions.socketio().ping_timeout);
                    }
                }
                inbound = async { match &mut self.inbound { Some(inbound) => inbound.recv().await, None => pending().await } } => match inbound {
                    Some(inbound) => self.on_inbound(inbound).await?,
                    None => return Err(End::TransportGone),
                },
                // Broadcasts the socket did not take at once (over TLS: all of them).
                () = async { match &direct { Some(outbound) => std::future::poll_fn(|cx| outbound.poll_has_pending(cx)).await, None => pending().await } } => {}
                message = async { match &mut self.transport { Transport::WebSocket(socket) => socket.next().await, Transport::Direct { socket, .. } => socket.next().await, Transport::Polling => pending().await } } => {
                    match message {
                        Some(Ok(Message::Text(text))) => self.on_packet(&text).await?,
                        Some(Ok(Message::Binary(_))) => self.on_binary("binary frames are not supported")?,
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => return Err(End::TransportGone),
                    }
                }
                message = async { match &mut self.probe { Some((socket, _)) => socket.next().await, None => pending().await } } => {
                    self.on_probe(message).await?;
                }
                event = async {
                    match self.client.as_mut() {
                        Some(client) if self.disconnecting.is_none() => client.recv_or_token_ended(can_deliver).await,
                        _ => pending().await,
                    }
                } => match event {
                    Ok(event) => self.take_events(event),
                    Err(ended) => self.disconnect_for(ended),
                },
            }
            self.flush().await?;
        }
    }

    /// Warns a minute before the token runs out; when it has, sends an
    /// `error` event and a DISCONNECT, after which the session ends.
    fn on_token_timer(&mut self) {
        let Some(client) = &mut self.client else {
            return;
        };
        match client.on_token_timer() {
            TokenTimer::Quiet => {}
            TokenTimer::Expiring { exp } => {
                let packet = socketio::event("token_expiring", &requests::token_expiring_data(exp));
                self.outbox.push_back(TextFrame::from(packet));
            }
            TokenTimer::Expired => self.disconnect_for(TokenError::Expired),
        }
    }

    /// The token ended (expired, revoked): an `error` event with its code and
    /// a DISCONNECT, so the client does not reconnect with it; the session
    /// ends once they are sent.
    fn disconnect_for(&mut self, refused: TokenError) {
        let data = requests::token_error_data(refused);
        self.queue(TextFrame::from(socketio::event("error", &data)));
        self.queue(TextFrame::from(socketio::disconnect()));
        // Nothing of the rooms after the DISCONNECT.
        if let Some(client) = &mut self.client {
            client.leave_all();
        }
        self.disconnecting = Some(CloseReason::Token(refused));
    }

    /// Queues `first` and what else is waiting, encoded once per room event.
    fn take_events(&mut self, first: Arc<RoomEvent>) {
        // One latency sample per batch: its oldest event.
        self.sessions
            .metrics()
            .publish_to_send_seconds
            .observe(first.published_at.elapsed().as_secs_f64());
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next {
            self.outbox.extend(room_event_text(&event));
            taken += 1;
            next = match &mut self.client {
                Some(client) if taken < MAX_EVENTS_PER_WRITE => client.subscriber().try_recv(),
                _ => None,
            };
        }
    }

    fn queue(&mut self, packet: TextFrame) {
        self.outbox.push_back(packet);
    }

    /// Hands a direct session's queued packets to its connection's queue.
    fn push_direct(&mut self) {
        if let Transport::Direct { outbound, .. } = &self.transport {
            push_frames(outbound, &mut self.outbox);
        }
    }

    /// Sends what is queued: over the WebSocket, or to a waiting GET. A
    /// direct session also writes what the fan-out queued that its socket
    /// did not take at once (over TLS: all of it).
    async fn flush(&mut self) -> Result<(), End> {
        let deadline = self.sessions.socketio().ping_timeout;
        let limit = self.sessions.limits().client_queue;
        match &mut self.transport {
            Transport::Direct { socket, outbound } => {
                push_frames(outbound, &mut self.outbox);
                bounded_write(deadline, socket.flush()).await
            }
            _ if self.outbox.is_empty() => Ok(()),
            // A polling client that stopped fetching: the same policy as a full queue.
            _ if self.outbox.len() > limit => Err(End::Closed(CloseReason::SlowConsumer)),
            Transport::WebSocket(socket) => {
                let packets: Vec<TextFrame> = self.outbox.drain(..).collect();
                let write = async {
                    for packet in packets {
                        socket.feed(Message::Text(packet)).await?;
                    }
                    socket.flush().await
                };
                bounded_write(deadline, write).await
            }
            Transport::Polling => {
                if let Some(waiting) = self.waiting_poll.take() {
                    let packets: Vec<TextFrame> = self.outbox.drain(..).collect();
                    let texts: Vec<&str> = packets.iter().map(TextFrame::as_str).collect();
                    if let Err(PollAnswer::Payload(_)) =
                        waiting.send(PollAnswer::Payload(engineio::join_payload(&texts)))
                    {
                        // The GET went away before its answer: keep the packets for the next one.
                        for packet in packets.into_iter().rev() {
                            self.outbox.push_front(packet);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Result<(), End> {
        match inbound {
            Inbound::Payload(body) => {
                for packet in engineio::split_payload(&body) {
                    self.on_packet(packet).await?;
                }
                Ok(())
            }
            Inbound::Poll(answer) => {
                if !matches!(self.transport, Transport::Polling) {
                    let _ = answer.send(PollAnswer::Closed);
                    return Ok(());
                }
                if let Some(previous) = self.waiting_poll.take() {
                    // As engine.io: the second GET gets 400, and the
                    // pending one ends cleanly with the session's close packet.
                    let _ = previous.send(PollAnswer::Payload(Packet::Close.encode()));
                    let _ = answer.send(PollAnswer::Overlap);
                    return Err(violation(Violation::PollingOverlap));
                }
                self.waiting_poll = Some(answer);
                Ok(())
            }
            Inbound::PostOverlap => Err(violation(Violation::PollingOverlap)),
            Inbound::Probe(socket) => {
                if matches!(self.transport, Transport::Polling) && self.probe.is_none() {
                    self.probe = Some((socket, false));
                }
                Ok(())
            }
        }
    }

    /// The upgrade: `2probe` → `3probe` (and a noop to end the pending poll),
    /// then `5` switches every later packet to the WebSocket.
    async fn on_probe(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), End> {
        let Some((mut socket, probed)) = self.probe.take() else {
            return Ok(());
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => {
                self.probe = Some((socket, probed));
                return Ok(());
            }
            // The probe failed; the client stays on polling.
            None | Some(Err(_)) => return Ok(()),
        };
        match Packet::decode(&text) {
            Ok(Packet::Ping("probe")) => {
                if socket
                    .send(Message::Text(Packet::Pong("probe").encode().into()))
                    .await
                    .is_ok()
                {
                    self.queue(TextFrame::from(Packet::Noop.encode()));
                    self.probe = Some((socket, true));
                }
            }
            Ok(Packet::Upgrade) if probed => {
                if let Some(waiting) = self.waiting_poll.take() {
                    let _ = waiting.send(PollAnswer::Payload(Packet::Noop.encode()));
                }
                self.transport = Transport::WebSocket(socket);
                tracing::debug!("upgraded to websocket");
            }
            _ => self.probe = Some((socket, probed)),
        }
        Ok(())
    }

    async fn on_packet(&mut self, text: &str) -> Result<(), End> {
        match Packet::decode(text) {
            Ok(Packet::Message(data)) => self.on_message(data).await,
            Ok(Packet::Pong(_)) => {
                self.pong_deadline = None;
                Ok(())
            }
            Ok(Packet::Ping(data)) => {
                let pong = Packet::Pong(data).encode();
                self.queue(TextFrame::from(pong));
                Ok(())
            }
            Ok(Packet::Close) => Err(End::ClientLeft),
            Ok(Packet::Open(_) | Packet::Upgrade | Packet::Noop) => Ok(()),
            Err(engineio::PacketError::Binary) => {
                self.on_binary("binary packets are not supported")
            }
            // engine.io closes the session on a packet it cannot decode.
            Err(_) => Err(violation(Violation::EngineIoPacket)),
        }
    }

    /// A binary Engine.IO message: an attachment of a binary packet already
    /// refused is dropped; any other is refused.
    fn on_binary(&mut self, message: &str) -> Result<(), End> {
        if self.skip_attachments > 0 {
            self.skip_attachments -= 1;
            return Ok(());
        }
        self.reject(ErrorCode::BinaryNotSupported, message)
    }

    async fn on_message(&mut self, data: &str) -> Result<(), End> {
        if let Some(client) = &mut self.client {
            client.spend_message().map_err(budget_end)?;
        }
        let limit = self.sessions.limits().max_client_frame_bytes;
        if data.len() > limit {
            return self.reject(
                ErrorCode::FrameTooLarge,
                &format!("packets are limited to {limit} bytes"),
            );
        }
        let connected = self.client.is_some();
        // Before CONNECT only CONNECT is valid, and after it only the
        // namespace connected to: socket.io closes the connection
        // otherwise ("invalid state").
        match socketio::parse(data) {
            Ok(ClientPacket::Connect { namespace, auth }) => self.on_connect(&namespace, auth),
            Ok(ClientPacket::Disconnect { namespace })
                if connected && namespace == socketio::MAIN_NAMESPACE =>
            {
                Err(End::ClientLeft)
            }
            Ok(ClientPacket::Event {
                namespace,
                ack,
                name,
                data,
            }) if connected && namespace == socketio::MAIN_NAMESPACE => {
                self.on_event(ack, &name, data)
            }
            Ok(ClientPacket::Ack) if connected => Ok(()),
            Ok(_) => Err(violation(Violation::NotConnected)),
            Err(socketio::PacketError::Binary { attachments, ack }) if connected => {
                self.skip_attachments = attachments;
                let mut error = ProtocolError::new(
                    ErrorCode::BinaryNotSupported,
                    "binary Socket.IO packets are not supported; emit JSON data",
                );
                // An ack id must be acknowledged: with the error.
                error.ack = ack;
                self.reject_error(&error)
            }
            Err(socketio::PacketError::Binary { .. }) => Err(violation(Violation::NotConnected)),
            Err(socketio::PacketError::Malformed(_)) => Err(violation(Violation::SocketIoPacket)),
        }
    }

    fn on_connect(&mut self, namespace: &str, auth: Option<Value>) -> Result<(), End> {
        if namespace != socketio::MAIN_NAMESPACE {
            let packet = socketio::connect_error(namespace, "Invalid namespace", None);
            self.queue(TextFrame::from(packet));
            return Ok(());
        }
        if self.client.is_some() {
            return Err(violation(Violation::AlreadyConnected));
        }
        let token = auth
            .as_ref()
            .and_then(|auth| auth.get("token"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| self.query_token.clone())
            .filter(|token| !token.is_empty());
        match self.sessions.auth().identify(token.as_deref()) {
            Ok(identity) => {
                let subscriber = match &self.transport {
                    Transport::Direct { outbound, .. } => {
                        self.sessions.rooms().connect_direct(outbound.clone())
                    }
                    _ => self.sessions.rooms().connect(),
                };
                let client = Client::new(self.sessions.clone(), identity, subscriber);
                self.client = Some(client);
                self.queue(TextFrame::from(socketio::connect(self.id.as_str())));
            }
            Err(refused) => {
                let packet = socketio::connect_error(
                    namespace,
                    refused.code(),
                    Some(&requests::token_error_data(refused)),
                );
                self.queue(TextFrame::from(packet));
            }
        }
        Ok(())
    }

    fn on_event(&mut self, ack: Option<u64>, name: &str, data: Value) -> Result<(), End> {
        if self.disconnecting.is_some() {
            return Ok(());
        }
        let request = match requests::parse_request(name, data) {
            Ok(request) => request,
            Err(mut error) => {
                error.ack = ack;
                return self.reject_error(&error);
            }
        };
        // A direct session's broadcasts wait while the reply and the join's
        // backlog are queued: missed events (or the retained state) go out
        // after the reply and before live ones.
        let hold = match &self.transport {
            Transport::Direct { outbound, .. } => Some(outbound.hold()),
            _ => None,
        };
        let Some(client) = &mut self.client else {
            return Err(violation(Violation::NotConnected));
        };
        let mut answer = client.handle(request);
        let outcome = answer.outcome(self.sessions.rooms().epoch());
        let packet = match ack {
            Some(id) if answer.kind == RequestKind::Ping => {
                socketio::ack(id, &requests::pong_data(true))
            }
            Some(id) => socketio::ack(id, &requests::reply_data(&outcome, true)),
            None if answer.kind == RequestKind::Ping => {
                socketio::event("pong", &requests::pong_data(false))
            }
            None => {
                let is_join = answer.kind == RequestKind::Join;
                let event = requests::reply_event(&outcome, is_join);
                socketio::event(event, &requests::reply_data(&outcome, false))
            }
        };
        self.queue(TextFrame::from(packet));
        let backlog = answer.take_backlog();
        for event in backlog {
            self.outbox.extend(room_event_text(&event));
        }
        self.push_direct();
        drop(hold);
        Ok(())
    }

    fn reject(&mut self, code: ErrorCode, message: &str) -> Result<(), End> {
        self.reject_error(&ProtocolError::new(code, message))
    }

    /// Answers a packet that changed nothing and counts it against the
    /// budget. Before CONNECT there is no budget: only CONNECT is valid
    /// then, and anything else closes the connection.
    fn reject_error(&mut self, error: &ProtocolError) -> Result<(), End> {
        let Some(client) = &mut self.client else {
            return Err(violation(Violation::NotConnected));
        };
        let packet = match error.ack {
            Some(id) => socketio::ack(id, &requests::error_data(error, true)),
            None => socketio::event("error", &requests::error_data(error, false)),
        };
        client.count_error(error.code).map_err(budget_end)?;
        self.queue(TextFrame::from(packet));
        Ok(())
    }

    /// Counts a close for breaking the protocol (or never connecting), by reason.
    fn count_protocol_close(&self, reason: CloseReason) {
        let reason = match reason {
            CloseReason::Violation(violation) => violation.reason(),
            CloseReason::ConnectTimeout => "connect_timeout",
            _ => return,
        };
        self.sessions
            .metrics()
            .socketio_protocol_closes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Ends the transport with a Close frame naming why, never with a
    /// Socket.IO DISCONNECT, so that `socket.io-client` reconnects by
    /// itself after a restart, as after a Node restart.
    async fn close_transport(&mut self, end: Result<(), End>) {
        let reason = match end {
            Err(End::Closed(reason)) => Some(reason),
            Err(End::PingTimeout) => Some(CloseReason::Idle),
            Err(End::ClientLeft) => Some(CloseReason::Normal),
            Ok(()) | Err(End::TransportGone) => None,
        };
        if let Some((mut socket, _)) = self.probe.take() {
            close(&mut socket, reason.unwrap_or(CloseReason::Shutdown)).await;
        }
        match std::mem::replace(&mut self.transport, Transport::Polling) {
            Transport::WebSocket(mut socket) => {
                if let Some(reason) = reason {
                    close(&mut socket, reason).await;
                }
            }
            Transport::Direct {
                mut socket,
                outbound,
            } => {
                if let Some(reason) = reason {
                    if reason == CloseReason::SlowConsumer {
                        // The Close frame should not wait behind what the client does not read.
                        outbound.discard_unsent();
                    }
                    close(&mut socket, reason).await;
                }
                outbound.close();
            }
            Transport::Polling => {
                if let Some(waiting) = self.waiting_poll.take() {
                    let _ = waiting.send(PollAnswer::Payload(Packet::Close.encode()));
                }
            }
        }
    }
}

/// Appends `outbox`'s packets, as WebSocket frames, to a direct session's
/// connection queue, behind what waits there.
fn push_frames(outbound: &Outbound, outbox: &mut VecDeque<TextFrame>) {
    if outbox.is_empty() {
        return;
    }
    let frames: Vec<bytes::Bytes> = outbox
        .drain(..)
        .map(|packet| text_frame(packet.as_bytes()))
        .collect();
    outbound.push(&frames);
}

/// A write that must finish within `deadline`: a client that takes longer
/// is a slow consumer; a failed write means it is gone.
async fn bounded_write(
    deadline: std::time::Duration,
    write: impl std::future::Future<Output = Result<(), tokio_tungstenite::tungstenite::Error>>,
) -> Result<(), End> {
    // Most writes complete at once: a timer only for one that waits.
    let mut write = std::pin::pin!(write);
    let written = match futures_util::FutureExt::now_or_never(write.as_mut()) {
        Some(written) => Ok(written),
        None => tokio::time::timeout(deadline, write).await,
    };
    match written {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::TransportGone),
        Err(_) => Err(End::Closed(CloseReason::SlowConsumer)),
    }
}

fn budget_end(exhausted: Exhausted) -> End {
    End::Closed(CloseReason::Budget(exhausted))
}
