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
// for, and its getMore stuck behind that write would wait forever.
//
// Nothing else ever reaches FerretDB out of turn: letting a command through after a wait would
// reopen the very race the proxy closes. Waiting for a turn is bounded all the same, and a command
// that does not get one within turnWait is answered here, without reaching FerretDB, with error 50
// (MaxTimeMSExpired). Drivers raise it as a server-side timeout (pymongo: ExecutionTimeout), which
// Leaseline treats as transient: the consumer retries with backoff, an HTTP request fails fast.
// Why an error rather than waiting on: the command has had no effect, so a retry is always safe,
// while an unbounded wait would turn one stuck command (FerretDB wedged, a reply that never comes)
// into every client hanging silently, with no error anywhere to tell an operator why.

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	maxMessageLen = 48 * 1024 * 1024
	opQuery       = 2004
	opMsg         = 2013
	// OP_MSG flag: the sender expects no reply (unacknowledged writes).
	flagMoreToCome = 1 << 1
	// MongoDB's MaxTimeMSExpired: "the operation exceeded its time limit".
	codeMaxTimeMSExpired = 50
)

var unqueued = map[string]bool{
	"hello": true, "isMaster": true, "ismaster": true, "ping": true, "buildInfo": true, "buildinfo": true,
	"endSessions": true, "saslStart": true, "saslContinue": true, "getMore": true, "killCursors": true,
}

// turnWait is how long a command may wait for its turn before it is refused (a variable for tests).
var turnWait = 5 * time.Second

// turn is held from the moment a command is forwarded until its reply comes back.
var turn = make(chan struct{}, 1)

// takeTurn waits at most wait for the turn (forever when wait is 0); false when it did not come.
func takeTurn(wait time.Duration) bool {
	if wait <= 0 {
		turn <- struct{}{}
		return true
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case turn <- struct{}{}:
		return true
	case <-timer.C:
		return false
	}
}

var replyIDs atomic.Int32

// timeoutReply is the OP_MSG answer to request: {ok: 0, errmsg, code: 50, codeName: "MaxTimeMSExpired"}.
func timeoutReply(request []byte, waited time.Duration) []byte {
	var doc []byte
	doc = appendDouble(doc, "ok", 0)
	doc = appendString(doc, "errmsg", "leaseline-ferretdb: no turn to reach the store after "+waited.String()+
		" (commands are serialised); the command was not run, retry it")
	doc = appendInt32(doc, "code", codeMaxTimeMSExpired)
	doc = appendString(doc, "codeName", "MaxTimeMSExpired")
	body := make([]byte, 4, 4+len(doc)+1)
	body = append(body, doc...)
	body = append(body, 0)
	binary.LittleEndian.PutUint32(body, uint32(len(body)))

	msg := make([]byte, 16, 16+4+1+len(body))
	binary.LittleEndian.PutUint32(msg[4:8], uint32(replyIDs.Add(1)))
	copy(msg[8:12], request[4:8]) // responseTo: the request's id
	binary.LittleEndian.PutUint32(msg[12:16], opMsg)
	msg = append(msg, 0, 0, 0, 0) // flagBits
	msg = append(msg, 0)          // section kind 0: the body document
	msg = append(msg, body...)
	binary.LittleEndian.PutUint32(msg[0:4], uint32(len(msg)))
	return msg
}

func appendElementName(doc []byte, kind byte, name string) []byte {
	doc = append(doc, kind)
	doc = append(doc, name...)
	return append(doc, 0)
}

func appendDouble(doc []byte, name string, value float64) []byte {
	doc = appendElementName(doc, 0x01, name)
	return binary.LittleEndian.AppendUint64(doc, math.Float64bits(value))
}

func appendString(doc []byte, name, value string) []byte {
	doc = appendElementName(doc, 0x02, name)
	doc = binary.LittleEndian.AppendUint32(doc, uint32(len(value)+1))
	doc = append(doc, value...)
	return append(doc, 0)
}

func appendInt32(doc []byte, name string, value int32) []byte {
	doc = appendElementName(doc, 0x10, name)
	return binary.LittleEndian.AppendUint32(doc, uint32(value))
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

// commandName is the first key of an OP_MSG body section (kind 0), or of the query of a legacy
// OP_QUERY command (drivers still open connections with one); "" for anything else.
func commandName(msg []byte) string {
	if len(msg) < 21 {
		return ""
	}
	switch binary.LittleEndian.Uint32(msg[12:16]) {
	case opMsg:
		for i := 20; i < len(msg); {
			kind := msg[i]
			i++
			switch {
			case kind == 0:
				return firstKey(msg, i)
			case kind == 1 && i+4 <= len(msg):
				i += int(binary.LittleEndian.Uint32(msg[i : i+4]))
			default:
				return ""
			}
		}
	case opQuery:
		// flags int32, fullCollectionName cstring, numberToSkip int32, numberToReturn int32, query.
		end := 20
		for end < len(msg) && msg[end] != 0 {
			end++
		}
		if !strings.HasSuffix(string(msg[20:end]), ".$cmd") {
			return ""
		}
		return firstKey(msg, end+1+8)
	}
	return ""
}

// firstKey is the name of the first element of the BSON document starting at msg[at].
func firstKey(msg []byte, at int) string {
	// int32 length, then the first element: type byte, then its name.
	start := at + 5
	if start >= len(msg) {
		return ""
	}
	end := start
	for end < len(msg) && msg[end] != 0 {
		end++
	}
	return string(msg[start:end])
}

// expectsNoReply: an OP_MSG sent with moreToCome gets no answer from the server.
func expectsNoReply(msg []byte) bool {
	return len(msg) >= 20 && binary.LittleEndian.Uint32(msg[12:16]) == opMsg &&
		binary.LittleEndian.Uint32(msg[16:20])&flagMoreToCome != 0
}

// dialer opens a connection to FerretDB itself.
type dialer func() (net.Conn, error)

func serveProxy(listener net.Listener, upstream dialer, logger *slog.Logger) {
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

func proxyConnection(client net.Conn, upstream dialer, logger *slog.Logger) {
	server, err := upstream()
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
	// Replies from FerretDB and refusals made here both go to the client: one write at a time.
	var writing sync.Mutex
	toClient := func(msg []byte) error {
		writing.Lock()
		defer writing.Unlock()
		_, err := client.Write(msg)
		return err
	}
	go func() {
		defer closeBoth()
		for {
			msg, err := readMessage(server)
			if err != nil {
				release()
				return
			}
			err = toClient(msg)
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
		name := commandName(msg)
		switch {
		case unqueued[name]:
		case expectsNoReply(msg):
			// No reply will release a turn, and none can carry a refusal: wait as long as it
			// takes, and hold the turn only while handing the message over. Leaseline never
			// sends unacknowledged writes; this keeps other clients from hanging if one does.
			takeTurn(0)
			_, err = server.Write(msg)
			<-turn
			if err != nil {
				return
			}
			continue
		case name == "" && binary.LittleEndian.Uint32(msg[12:16]) != opMsg:
			// A legacy message cannot be answered with an OP_MSG refusal: wait for the turn.
			takeTurn(0)
			holding <- struct{}{}
		case takeTurn(turnWait):
			holding <- struct{}{}
		default:
			logger.Warn("a command waited too long for its turn; refused with MaxTimeMSExpired",
				"command", name, "waited", turnWait)
			if err = toClient(timeoutReply(msg, turnWait)); err != nil {
				return
			}
			continue
		}
		if _, err = server.Write(msg); err != nil {
			release()
			return
		}
	}
}
