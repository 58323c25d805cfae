"""A TCP relay on another loopback address (127.0.0.2 by default) for the Platform tests.

The emulator listens on 127.0.0.1 only. A vault URL on 127.0.0.2 is a different host for the
client's token rules, and this relay both counts every connection made to it (so a test can
prove the client never contacted that host) and, when given a target, forwards the bytes to the
emulator (so a test can prove an allowed vault host really is used). The emulator then records
the Host header the client sent, 127.0.0.2:<relay port>, in state()['bearer_hosts'].
"""

import socket
import threading

import pytest


class Relay:
    def __init__(self, target=None, host='127.0.0.2'):
        self.target = target  # (host, port) to forward to, or None to accept and close
        self.host = host
        self.port = None
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = None
        self._stopping = threading.Event()
        self._threads = []

    @property
    def netloc(self):
        return '%s:%d' % (self.host, self.port)

    def url(self, path=''):
        return 'http://%s%s' % (self.netloc, path)

    def start(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((self.host, 0))
        except OSError as exc:  # e.g. macOS routes only 127.0.0.1 to loopback by default
            listener.close()
            pytest.skip('cannot listen on %s: %s' % (self.host, exc))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        listener.settimeout(0.2)
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def stop(self):
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                client, dummy = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            if self.target is None:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            pair = {'open': 2, 'sockets': (client, upstream), 'lock': threading.Lock()}
            self._spawn(self._pump, client, upstream, pair)
            self._spawn(self._pump, upstream, client, pair)

    def _pump(self, source, sink, pair):
        source.settimeout(0.5)
        try:
            while not self._stopping.is_set():
                try:
                    data = source.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Half-close so the other direction drains, then let both sockets go.
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with pair['lock']:
                pair['open'] -= 1
                last = pair['open'] == 0
            if last:
                for sock in pair['sockets']:
                    sock.close()
