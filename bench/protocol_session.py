"""A dashboard session driven over Streamlit's own websocket protocol, with no browser.

It stands for a user whose browser runs on a machine of its own. The server gets what a browser
sends (a run of a page with the view's query string, a button's trigger) and sends back every
message it would send a browser; nothing on this machine draws them. bench_dashboard's
--remote-users puts these next to one real browser, so that browser shares the server's cores
with the server's work for four users and not with three more browsers.

Widget values are not sent: the dashboard keeps every view widget in session state (views/state.py),
so a run without them draws the same view, as a copied link does.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect


@dataclass
class Run:
    """What one script run sent: its elements as (kind, text), the error messages and exceptions
    it showed, and the seconds from request to end."""

    elements: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def texts(self, kind: str) -> list[str]:
        return [text for k, text in self.elements if k == kind]

    def has(self, kind: str) -> bool:
        return any(k == kind for k, _ in self.elements)


def _element_text(element) -> tuple[str, str]:
    kind = element.WhichOneof("type")
    body = getattr(element, kind)
    for name in ("body", "label", "code_text"):
        if hasattr(body, name):
            return kind, getattr(body, name)
    return kind, ""


class ProtocolSession:
    """One session, connected for the length of a `with` block: `open` a page, `click` a button;
    each returns the Run it caused."""

    def __init__(self, url: str, query_string: str = "", timeout_s: float = 120.0):
        self.url = url.replace("http", "ws", 1) + "/_stcore/stream"
        self.connection = contextlib.ExitStack()
        self.timeout_s = timeout_s
        self.query_string = query_string  # the view; the server rewrites it as the browser's URL
        self.page_hashes: dict[str, str] = {}  # url path -> page script hash, from the navigation message
        self.page_hash = ""
        self.buttons: dict[str, str] = {}  # label -> widget id, from the last run

    def __enter__(self) -> ProtocolSession:
        self.socket = self.connection.enter_context(
            connect(self.url, subprotocols=["streamlit"], max_size=None, open_timeout=self.timeout_s)
        )
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()

    def open(self, path: str) -> Run:
        """Run the page at url `path` ("" is the default page), as a sidebar link does."""
        message = BackMsg()
        message.rerun_script.query_string = self.query_string
        if path in self.page_hashes:
            message.rerun_script.page_script_hash = self.page_hashes[path]
        else:  # the first run of a session: the server resolves the path, as for a typed URL
            message.rerun_script.page_name = path
        return self._run(message)

    def click(self, label: str) -> Run:
        """Press the button labelled `label` drawn by the last run."""
        message = BackMsg()
        message.rerun_script.query_string = self.query_string
        message.rerun_script.page_script_hash = self.page_hash
        widget = message.rerun_script.widget_states.widgets.add()
        widget.id = self.buttons[label]
        widget.trigger_value = True
        return self._run(message)

    def _run(self, message: BackMsg) -> Run:
        run, start = Run(), time.perf_counter()
        self.buttons = {}
        self.socket.send(message.SerializeToString())
        while True:
            reply = ForwardMsg()
            reply.ParseFromString(self.socket.recv(timeout=self.timeout_s))
            kind = reply.WhichOneof("type")
            if kind == "navigation":
                self.page_hashes = {p.url_pathname: p.page_script_hash for p in reply.navigation.app_pages}
                self.page_hash = reply.navigation.page_script_hash
            elif kind == "page_info_changed":
                self.query_string = reply.page_info_changed.query_string
            elif kind == "delta" and reply.delta.WhichOneof("type") == "new_element":
                element = reply.delta.new_element
                run.elements.append(_element_text(element))
                if element.WhichOneof("type") == "button":
                    self.buttons[element.button.label] = element.button.id
                elif element.WhichOneof("type") == "exception":
                    run.errors.append(f"{element.exception.type}: {element.exception.message}")
                elif element.WhichOneof("type") == "alert" and element.alert.format == Alert.ERROR:
                    run.errors.append(element.alert.body)
            elif kind == "script_finished":
                if reply.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    continue  # another run follows (a rerun the page asked for)
                run.seconds = time.perf_counter() - start
                return run
