package main

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
)

// opMsgCommand is an OP_MSG carrying command (its first key names it), with the given flags.
func opMsgCommand(t *testing.T, requestID int32, flags uint32, command bson.D) []byte {
	t.Helper()
	body, err := bson.Marshal(command)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 16, 21+len(body))
	binary.LittleEndian.PutUint32(msg[4:8], uint32(requestID))
	binary.LittleEndian.PutUint32(msg[12:16], opMsg)
	msg = binary.LittleEndian.AppendUint32(msg, flags)
	msg = append(msg, 0)
	msg = append(msg, body...)
	binary.LittleEndian.PutUint32(msg[0:4], uint32(len(msg)))
	return msg
}

// fakeStore stands for the embedded FerretDB: it records the commands that reach it and answers
// each with {ok: 1} once its reply gate lets it (a closed gate holds every reply back).
type fakeStore struct {
	listener net.Listener
	gate     chan struct{}
	mu       sync.Mutex
	received []string
}

func startFakeStore(t *testing.T) *fakeStore {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	store := &fakeStore{listener: listener, gate: make(chan struct{}, 100)}
	t.Cleanup(func() { _ = listener.Close() })
	go func() {
		for {
			conn, err := listener.Accept()
			if err != nil {
				return
			}
			go store.serve(t, conn)
		}
	}()
	return store
}

func (s *fakeStore) serve(t *testing.T, conn net.Conn) {
	defer conn.Close()
	for {
		msg, err := readMessage(conn)
		if err != nil {
			return
		}
		s.mu.Lock()
		s.received = append(s.received, commandName(msg))
		s.mu.Unlock()
		if expectsNoReply(msg) {
			continue
		}
		<-s.gate
		reply := opMsgCommand(t, 0, 0, bson.D{{Key: "ok", Value: 1.0}})
		copy(reply[8:12], msg[4:8])
		if _, err := conn.Write(reply); err != nil {
			return
		}
	}
}

func (s *fakeStore) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.received...)
}

func startProxy(t *testing.T, upstream string) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = listener.Close() })
	dialUpstream := func() (net.Conn, error) { return net.Dial("tcp", upstream) }
	go serveProxy(listener, dialUpstream, slog.New(slog.NewTextHandler(io.Discard, nil)))
	return listener.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func send(t *testing.T, conn net.Conn, msg []byte) {
	t.Helper()
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
}

type reply struct {
	responseTo int32
	body       bson.M
}

func receive(t *testing.T, conn net.Conn, within time.Duration) reply {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	msg, err := readMessage(conn)
	if err != nil {
		t.Fatalf("no reply within %s: %v", within, err)
	}
	if op := binary.LittleEndian.Uint32(msg[12:16]); op != opMsg || msg[20] != 0 {
		t.Fatalf("reply is not an OP_MSG with a body section: opcode %d, section kind %d", op, msg[20])
	}
	var body bson.M
	if err := bson.Unmarshal(msg[21:], &body); err != nil {
		t.Fatalf("reply body is not BSON: %v", err)
	}
	return reply{int32(binary.LittleEndian.Uint32(msg[8:12])), body}
}

func eventuallyReceived(t *testing.T, store *fakeStore, want []string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := store.commands()
		if equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store received %v, want %v", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func withTurnWait(t *testing.T, wait time.Duration) {
	t.Helper()
	previous := turnWait
	turnWait = wait
	t.Cleanup(func() { turnWait = previous })
}

func TestACommandThatGetsNoTurnInTimeIsRefusedWithMaxTimeMSExpiredAndNeverReachesTheStore(t *testing.T) {
	withTurnWait(t, 200*time.Millisecond)
	store := startFakeStore(t)
	proxy := startProxy(t, store.listener.Addr().String())
	first, second := dial(t, proxy), dial(t, proxy)

	send(t, first, opMsgCommand(t, 7, 0, bson.D{{Key: "update", Value: "accounts"}}))
	eventuallyReceived(t, store, []string{"update"}) // holds the turn: the store does not answer yet
	started := time.Now()
	send(t, second, opMsgCommand(t, 8, 0, bson.D{{Key: "insert", Value: "accounts"}}))

	refused := receive(t, second, 2*time.Second)
	if waited := time.Since(started); waited < turnWait {
		t.Fatalf("refused after %s, before its %s wait for a turn was over", waited, turnWait)
	}
	if refused.responseTo != 8 {
		t.Fatalf("the refusal answers request %d, want 8", refused.responseTo)
	}
	if refused.body["ok"] != 0.0 || refused.body["code"] != int32(50) || refused.body["codeName"] != "MaxTimeMSExpired" {
		t.Fatalf("refusal %v is not {ok: 0, code: 50, codeName: MaxTimeMSExpired}", refused.body)
	}
	time.Sleep(100 * time.Millisecond)
	if got := store.commands(); !equal(got, []string{"update"}) {
		t.Fatalf("the refused command reached the store out of turn: it received %v", got)
	}

	// The connection stays usable: once the turn is free, its next command goes through.
	store.gate <- struct{}{}
	if answer := receive(t, first, 2*time.Second); answer.responseTo != 7 || answer.body["ok"] != 1.0 {
		t.Fatalf("first client's reply: %+v", answer)
	}
	send(t, second, opMsgCommand(t, 9, 0, bson.D{{Key: "insert", Value: "accounts"}}))
	store.gate <- struct{}{}
	if answer := receive(t, second, 2*time.Second); answer.responseTo != 9 || answer.body["ok"] != 1.0 {
		t.Fatalf("second client's retry: %+v", answer)
	}
	eventuallyReceived(t, store, []string{"update", "insert"})
}

func TestACommandWaitsForTheTurnAndGoesThroughWhenTheReplyBeforeItComesBack(t *testing.T) {
	withTurnWait(t, 2*time.Second)
	store := startFakeStore(t)
	proxy := startProxy(t, store.listener.Addr().String())
	first, second := dial(t, proxy), dial(t, proxy)

	send(t, first, opMsgCommand(t, 1, 0, bson.D{{Key: "update", Value: "accounts"}}))
	eventuallyReceived(t, store, []string{"update"})
	send(t, second, opMsgCommand(t, 2, 0, bson.D{{Key: "update", Value: "accounts"}}))
	time.Sleep(100 * time.Millisecond)
	if got := store.commands(); !equal(got, []string{"update"}) {
		t.Fatalf("two commands reached the store at once: %v", got)
	}
	store.gate <- struct{}{}
	store.gate <- struct{}{}
	if answer := receive(t, first, 2*time.Second); answer.body["ok"] != 1.0 {
		t.Fatalf("first: %+v", answer)
	}
	if answer := receive(t, second, 2*time.Second); answer.responseTo != 2 || answer.body["ok"] != 1.0 {
		t.Fatalf("second: %+v", answer)
	}
}

func TestHandshakesSkipTheQueueAndAMessageExpectingNoReplyHoldsNoTurn(t *testing.T) {
	withTurnWait(t, 200*time.Millisecond)
	store := startFakeStore(t)
	proxy := startProxy(t, store.listener.Addr().String())
	first, second := dial(t, proxy), dial(t, proxy)

	send(t, first, opMsgCommand(t, 1, flagMoreToCome, bson.D{{Key: "insert", Value: "accounts"}}))
	eventuallyReceived(t, store, []string{"insert"})
	send(t, second, opMsgCommand(t, 2, 0, bson.D{{Key: "update", Value: "accounts"}}))
	eventuallyReceived(t, store, []string{"insert", "update"}) // the turn was free again
	send(t, first, opMsgCommand(t, 3, 0, bson.D{{Key: "hello", Value: 1}}))
	eventuallyReceived(t, store, []string{"insert", "update", "hello"}) // while update holds the turn
}

func TestCommandNamesAreReadFromOpMsgAndLegacyOpQueryCommands(t *testing.T) {
	if name := commandName(opMsgCommand(t, 1, 0, bson.D{{Key: "findAndModify", Value: "c"}})); name != "findAndModify" {
		t.Fatalf("OP_MSG: %q", name)
	}
	query, _ := bson.Marshal(bson.D{{Key: "isMaster", Value: 1}})
	msg := make([]byte, 20)
	binary.LittleEndian.PutUint32(msg[12:16], opQuery)
	msg = append(msg, "admin.$cmd"...)
	msg = append(msg, 0)
	msg = append(msg, make([]byte, 8)...)
	msg = append(msg, query...)
	binary.LittleEndian.PutUint32(msg[0:4], uint32(len(msg)))
	if name := commandName(msg); name != "isMaster" {
		t.Fatalf("OP_QUERY: %q", name)
	}
}
