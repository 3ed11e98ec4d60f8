//! The browser's live connection to an SSE stream.
//!
//! A thin wrapper over `EventSource`: it hands each frame (type, data, id) to a callback,
//! tells whether the connection is up, and remembers the last event id. The browser itself
//! reconnects after a network error, sending `Last-Event-ID`; if it gives up (the server
//! answered with an error while restarting), this reconnects after a pause with
//! `?after=<last id>`, so nothing is lost either way.

/// Whether a live stream is connected.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Not yet connected (also what the server renders).
    Connecting,
    /// Receiving.
    Live,
    /// Lost; trying again.
    Reconnecting,
}

impl Connection {
    /// A label for people.
    pub fn label(self) -> &'static str {
        match self {
            Connection::Connecting => "connecting",
            Connection::Live => "live",
            Connection::Reconnecting => "reconnecting…",
        }
    }

    /// The indicator's CSS classes (`conn conn-live`, ...).
    pub fn class(self) -> &'static str {
        match self {
            Connection::Connecting => "conn conn-connecting",
            Connection::Live => "conn conn-live",
            Connection::Reconnecting => "conn conn-reconnecting",
        }
    }
}

#[cfg(feature = "hydrate")]
pub use browser::LiveStream;

#[cfg(feature = "hydrate")]
mod browser {
    use std::{cell::RefCell, rc::Rc};

    use wasm_bindgen::{JsCast, prelude::Closure};
    use web_sys::{EventSource, MessageEvent};

    use super::Connection;

    type OnEvent = Rc<dyn Fn(&str, &str, i64)>;
    type OnConnection = Rc<dyn Fn(Connection)>;

    struct Inner {
        base_url: String,
        last_id: i64,
        source: Option<EventSource>,
        listeners: Vec<Closure<dyn FnMut(MessageEvent)>>,
        on_open: Option<Closure<dyn FnMut(web_sys::Event)>>,
        on_error: Option<Closure<dyn FnMut(web_sys::Event)>>,
        retry_timer: Option<gloo_timers_lite::Timeout>,
        closed: bool,
    }

    /// An open stream; dropping it (or [`LiveStream::close`]) closes the connection.
    #[derive(Clone)]
    pub struct LiveStream {
        inner: Rc<RefCell<Inner>>,
        on_event: OnEvent,
        on_connection: OnConnection,
    }

    impl LiveStream {
        /// Opens `base_url` (with `?after=last_id` when `last_id > 0`).
        pub fn open(
            base_url: &str,
            last_id: i64,
            on_event: impl Fn(&str, &str, i64) + 'static,
            on_connection: impl Fn(Connection) + 'static,
        ) -> Self {
            let s = Self {
                inner: Rc::new(RefCell::new(Inner {
                    base_url: base_url.to_string(),
                    last_id,
                    source: None,
                    listeners: vec![],
                    on_open: None,
                    on_error: None,
                    retry_timer: None,
                    closed: false,
                })),
                on_event: Rc::new(on_event),
                on_connection: Rc::new(on_connection),
            };
            s.connect();
            s
        }

        fn connect(&self) {
            let url = {
                let i = self.inner.borrow();
                if i.closed {
                    return;
                }
                if i.last_id > 0 {
                    let sep = if i.base_url.contains('?') { '&' } else { '?' };
                    format!("{}{sep}after={}", i.base_url, i.last_id)
                } else {
                    i.base_url.clone()
                }
            };
            let Ok(source) = EventSource::new(&url) else {
                (self.on_connection)(Connection::Reconnecting);
                self.retry_later();
                return;
            };
            // The snapshot frame, then every event type the model defines.
            let types = std::iter::once("snapshot").chain(cairn::Event::TYPE_NAMES);
            let mut listeners = Vec::with_capacity(cairn::Event::TYPE_NAMES.len() + 1);
            for ty in types {
                let me = self.clone();
                let cb = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
                    let data = e.data().as_string().unwrap_or_default();
                    let id = e.last_event_id().parse::<i64>().unwrap_or(0);
                    if id > 0 {
                        me.inner.borrow_mut().last_id = id;
                    }
                    (me.on_event)(ty, &data, id);
                });
                let _ = source.add_event_listener_with_callback(ty, cb.as_ref().unchecked_ref());
                listeners.push(cb);
            }
            let on_conn = self.on_connection.clone();
            let on_open =
                Closure::<dyn FnMut(web_sys::Event)>::new(move |_| on_conn(Connection::Live));
            source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
            let me = self.clone();
            let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
                (me.on_connection)(Connection::Reconnecting);
                let gave_up = me
                    .inner
                    .borrow()
                    .source
                    .as_ref()
                    .is_some_and(|s| s.ready_state() == EventSource::CLOSED);
                if gave_up {
                    me.retry_later();
                }
            });
            source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
            let mut i = self.inner.borrow_mut();
            if let Some(old) = i.source.take() {
                old.close();
            }
            i.source = Some(source);
            i.listeners = listeners;
            i.on_open = Some(on_open);
            i.on_error = Some(on_error);
        }

        fn retry_later(&self) {
            let me = self.clone();
            let timer = gloo_timers_lite::Timeout::new(1000, move || me.connect());
            self.inner.borrow_mut().retry_timer = Some(timer);
        }

        /// Closes the connection for good.
        pub fn close(&self) {
            let mut i = self.inner.borrow_mut();
            i.closed = true;
            if let Some(s) = i.source.take() {
                s.close();
            }
            i.retry_timer = None;
        }
    }

    /// A one-shot `setTimeout`, cleared when dropped.
    mod gloo_timers_lite {
        use wasm_bindgen::{JsCast, prelude::Closure};

        pub struct Timeout {
            id: i32,
            _cb: Closure<dyn FnMut()>,
        }

        impl Timeout {
            pub fn new(ms: i32, f: impl FnOnce() + 'static) -> Self {
                let mut f = Some(f);
                let cb = Closure::<dyn FnMut()>::new(move || {
                    if let Some(f) = f.take() {
                        f();
                    }
                });
                let id = web_sys::window()
                    .and_then(|w| {
                        w.set_timeout_with_callback_and_timeout_and_arguments_0(
                            cb.as_ref().unchecked_ref(),
                            ms,
                        )
                        .ok()
                    })
                    .unwrap_or(0);
                Self { id, _cb: cb }
            }
        }

        impl Drop for Timeout {
            fn drop(&mut self) {
                if let Some(w) = web_sys::window() {
                    w.clear_timeout_with_handle(self.id);
                }
            }
        }
    }
}
