package main

// FerretDB v1 on SQLite carries out an update as a query followed by a separate write, with nothing
// held in between, and its pooled SQLite connections may read an older snapshot: two concurrent
// updates of one document can both read the old version and one is lost, even when its filter
// checks a version number (measured: 36 of 450 version-guarded updates and 267 of 600 $inc kept
// under contention). MongoDB applies each single-document update atomically, and Leaseline rests on
// that (optimistic concurrency, outbox relay, counters). So the public listener is a small wire
// proxy that lets one command at a time reach FerretDB. Serialising only the modifying commands
// was not enough (a few updates per thousand were still lost), so every command waits its turn.
// SQLite admits one writer at a time anyway; this store is for local runs and tests only.
// Handshakes and health checks skip the queue: a driver whose heartbeat waits behind a long write
// declares the server lost and cancels everything in flight. Cursor continuations (getMore,
// killCursors) skip it too: an open cursor can hold SQLite's read lock that a queued write waits
// for, and its getMore stuck behind that write would wait forever. Waiting for a turn is bounded,
// so that nothing can stall the store for good.

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

const (
	maxMessageLen = 48 * 1024 * 1024
	opMsg         = 2013
)

var unqueued = map[string]bool{
	"hello": true, "isMaster": true, "ismaster": true, "ping": true, "buildInfo": true, "buildinfo": true,
	"endSessions": true, "saslStart": true, "saslContinue": true, "getMore": true, "killCursors": true,
}

const turnWait = 5 * time.Second

// turn is held from the moment a command is forwarded until its reply comes back.
var turn = make(chan struct{}, 1)

func takeTurn(logger *slog.Logger) bool {
	select {
	case turn <- struct{}{}:
		return true
	case <-time.After(turnWait):
		logger.Warn("a command waited too long for its turn; letting it through")
		return false
	}
}

func readMessage(r io.Reader) ([]byte, error) {
	var header [4]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return nil, err
	}
	n := int(binary.LittleEndian.Uint32(header[:]))
	if n < 16 || n > maxMessageLen {
		return nil, errors.New("invalid wire message length")
	}
	msg := make([]byte, n)
	copy(msg, header[:])
	if _, err := io.ReadFull(r, msg[4:]); err != nil {
		return nil, err
	}
	return msg, nil
}

// commandName is the first key of an OP_MSG body section (kind 0); "" for anything else.
func commandName(msg []byte) string {
	if len(msg) < 27 || binary.LittleEndian.Uint32(msg[12:16]) != opMsg {
		return ""
	}
	for i := 20; i < len(msg); {
		kind := msg[i]
		i++
		switch {
		case kind == 0 && i+5 < len(msg):
			// BSON document: int32 length, then the first element: type byte, then its name.
			start := i + 5
			end := start
			for end < len(msg) && msg[end] != 0 {
				end++
			}
			return string(msg[start:end])
		case kind == 1 && i+4 <= len(msg):
			i += int(binary.LittleEndian.Uint32(msg[i : i+4]))
		default:
			return ""
		}
	}
	return ""
}

func serveProxy(listener net.Listener, upstream string, logger *slog.Logger) {
	for {
		client, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			logger.Warn("accept failed", "error", err)
			continue
		}
		go proxyConnection(client, upstream, logger)
	}
}

func proxyConnection(client net.Conn, upstream string, logger *slog.Logger) {
	server, err := net.Dial("tcp", upstream)
	if err != nil {
		logger.Warn("cannot reach embedded FerretDB", "error", err)
		_ = client.Close()
		return
	}
	// holding carries "a command is in flight on this connection" from the
	// client->server goroutine to the server->client one (drivers send one command at a time
	// per connection, so the next reply is its reply).
	holding := make(chan struct{}, 1)
	release := func() {
		select {
		case <-holding:
			<-turn
		default:
		}
	}
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = client.Close()
			_ = server.Close()
		})
	}
	go func() {
		defer closeBoth()
		for {
			msg, err := readMessage(server)
			if err != nil {
				release()
				return
			}
			_, err = client.Write(msg)
			release()
			if err != nil {
				return
			}
		}
	}()
	defer closeBoth()
	for {
		msg, err := readMessage(client)
		if err != nil {
			return
		}
		if !unqueued[commandName(msg)] && takeTurn(logger) {
			holding <- struct{}{}
		}
		if _, err = server.Write(msg); err != nil {
			release()
			return
		}
	}
}
