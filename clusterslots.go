package queue

// Hash slots, the commands' keys, the slot map as CLUSTER SHARDS and
// CLUSTER SLOTS give it, and the cluster's redirection replies.

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// keySlot returns the hash slot of key: CRC16 (XMODEM) of its hash tag
// (the part between the first '{' and the next '}', when not empty), or
// of the whole key.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^key[i]]
	}
	return int(crc) % clusterSlots
}

var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// commandKey returns the key a command is routed by: the first key of a
// script, the first argument of the other commands this package sends.
// keyless reports a command that any primary may answer; a command that
// is neither (connection state: CLIENT, SUBSCRIBE, MULTI, SELECT) is
// refused on a cluster connection.
func commandKey(cmd string, args []any) (key string, keyless, ok bool) {
	switch strings.ToUpper(cmd) {
	case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
		if len(args) < 3 {
			return "", false, false
		}
		if n, err := strconv.Atoi(argString(args[1])); err != nil || n < 1 {
			return "", true, true // a script without keys: any primary
		}
		return argString(args[2]), false, true
	case "PING", "ECHO", "TIME", "INFO", "CONFIG", "ROLE", "DBSIZE", "SCRIPT", "FUNCTION", "COMMAND", "LOLWUT":
		return "", true, true
	case "CLIENT", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "MULTI", "EXEC", "DISCARD",
		"WATCH", "UNWATCH", "SELECT", "AUTH", "HELLO", "RESET", "MONITOR", "QUIT", "ASKING", "READONLY",
		"WAIT", "SCAN", "KEYS", "FLUSHDB", "FLUSHALL", "RANDOMKEY":
		return "", false, false
	}
	if len(args) == 0 {
		return "", false, false
	}
	return argString(args[0]), false, true
}

// commandSlot returns the slot a command goes to (-1: any primary), or
// the refusal of a command a cluster connection does not carry.
func commandSlot(cmd string, args []any) (int, error) {
	key, keyless, ok := commandKey(cmd, args)
	switch {
	case !ok:
		return 0, redis.Error("ERR " + strings.ToUpper(cmd) + " is not supported on a Redis Cluster connection")
	case keyless:
		return -1, nil
	}
	return keySlot(key), nil
}

// argString renders a command argument as redigo writes it.
func argString(a any) string {
	switch v := a.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	default:
		return fmt.Sprint(v)
	}
}

// slotMap is one reading of the cluster's slot owners.
type slotMap struct {
	owner     [clusterSlots]int16 // index into primaries, -1 when no primary serves the slot
	primaries []string            // addresses host:port
}

func (m *slotMap) addrOf(slot int) string {
	if i := m.owner[slot]; i >= 0 {
		return m.primaries[i]
	}
	return ""
}

// nodeAddr renders a node's address; an empty or "?" host is the one
// that was asked (a node that does not know its own address says so).
func nodeAddr(host string, port int64, asked string) string {
	if host == "" || host == "?" {
		host, _, _ = net.SplitHostPort(asked)
	}
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}

func newSlotMap() *slotMap {
	m := &slotMap{}
	for i := range m.owner {
		m.owner[i] = -1
	}
	return m
}

// assign gives slots [from, to] to the primary at addr.
func (m *slotMap) assign(from, to int64, addr string) error {
	if from < 0 || to >= clusterSlots || from > to {
		return fmt.Errorf("slot range %d-%d out of bounds", from, to)
	}
	i := slices.Index(m.primaries, addr)
	if i < 0 {
		i = len(m.primaries)
		m.primaries = append(m.primaries, addr)
	}
	for s := from; s <= to; s++ {
		m.owner[s] = int16(i)
	}
	return nil
}

// parseClusterShards reads CLUSTER SHARDS: per shard, "slots" (a flat
// list of range bounds) and "nodes" (maps of fields), of which the one
// with role "master" and a health other than failed ("fail" in Redis
// 7.0's replies, "failed" in its documentation) serves, on its
// "tls-port" for a TLS client.
func parseClusterShards(reply []any, asked string, tls bool) (*slotMap, error) {
	m := newSlotMap()
	for _, sh := range reply {
		fields, err := redis.Values(sh, nil)
		if err != nil {
			return nil, fmt.Errorf("CLUSTER SHARDS: %w", err)
		}
		var ranges []int64
		var primary string
		for i := 0; i+1 < len(fields); i += 2 {
			name, _ := redis.String(fields[i], nil)
			switch name {
			case "slots":
				if ranges, err = redis.Int64s(fields[i+1], nil); err != nil {
					return nil, fmt.Errorf("CLUSTER SHARDS slots: %w", err)
				}
			case "nodes":
				nodes, err := redis.Values(fields[i+1], nil)
				if err != nil {
					return nil, fmt.Errorf("CLUSTER SHARDS nodes: %w", err)
				}
				for _, n := range nodes {
					kv, err := fieldMap(n)
					if err != nil {
						return nil, fmt.Errorf("CLUSTER SHARDS node: %w", err)
					}
					if h := kv["health"]; kv["role"] != "master" || h == "fail" || h == "failed" {
						continue
					}
					// A node may serve TLS and plain connections on
					// two ports: take the one of the client's kind.
					first, second := "port", "tls-port"
					if tls {
						first, second = second, first
					}
					port, _ := strconv.ParseInt(kv[first], 10, 64)
					if port == 0 {
						port, _ = strconv.ParseInt(kv[second], 10, 64)
					}
					host := kv["ip"]
					if h := kv["endpoint"]; h != "" && h != "?" {
						host = h
					}
					primary = nodeAddr(host, port, asked)
				}
			}
		}
		if primary == "" || len(ranges) == 0 {
			continue
		}
		for i := 0; i+1 < len(ranges); i += 2 {
			if err := m.assign(ranges[i], ranges[i+1], primary); err != nil {
				return nil, fmt.Errorf("CLUSTER SHARDS: %w", err)
			}
		}
	}
	if len(m.primaries) == 0 {
		return nil, errors.New("CLUSTER SHARDS: no primary serves a slot")
	}
	return m, nil
}

// fieldMap reads a flat list of field names and values (strings or
// integers) as a map of strings.
func fieldMap(v any) (map[string]string, error) {
	list, err := redis.Values(v, nil)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(list)/2)
	for i := 0; i+1 < len(list); i += 2 {
		k, err := redis.String(list[i], nil)
		if err != nil {
			return nil, err
		}
		switch x := list[i+1].(type) {
		case int64:
			m[k] = strconv.FormatInt(x, 10)
		case []byte:
			m[k] = string(x)
		}
	}
	return m, nil
}

// parseClusterSlots reads CLUSTER SLOTS: per range, its first and last
// slot, then its primary (host, port, ...), then its replicas.
func parseClusterSlots(reply []any, asked string) (*slotMap, error) {
	m := newSlotMap()
	for _, rg := range reply {
		v, err := redis.Values(rg, nil)
		if err != nil || len(v) < 3 {
			return nil, errors.New("CLUSTER SLOTS: malformed range")
		}
		from, err1 := redis.Int64(v[0], nil)
		to, err2 := redis.Int64(v[1], nil)
		node, err3 := redis.Values(v[2], nil)
		if err1 != nil || err2 != nil || err3 != nil || len(node) < 2 {
			return nil, errors.New("CLUSTER SLOTS: malformed range")
		}
		host, _ := redis.String(node[0], nil)
		port, err := redis.Int64(node[1], nil)
		if err != nil {
			return nil, errors.New("CLUSTER SLOTS: malformed node")
		}
		if err := m.assign(from, to, nodeAddr(host, port, asked)); err != nil {
			return nil, fmt.Errorf("CLUSTER SLOTS: %w", err)
		}
	}
	if len(m.primaries) == 0 {
		return nil, errors.New("CLUSTER SLOTS: no primary serves a slot")
	}
	return m, nil
}

// redirect is what a cluster error reply asks of its command.
type redirect int

const (
	noRedirect redirect = iota
	movedTo             // MOVED slot addr: go to addr, and update the map
	askTo               // ASK slot addr: go to addr once, after ASKING
	tryAgain            // refused before running: send it again later
)

// parseRedirect reads a cluster error reply.
func parseRedirect(err error) (redirect, int, string) {
	var re redis.Error
	if !errors.As(err, &re) {
		return noRedirect, 0, ""
	}
	msg := string(re)
	word, rest, _ := strings.Cut(msg, " ")
	switch word {
	case "MOVED", "ASK":
		slotStr, addr, ok := strings.Cut(rest, " ")
		slot, err := strconv.Atoi(slotStr)
		if !ok || err != nil || slot < 0 || slot >= clusterSlots || addr == "" {
			return noRedirect, 0, ""
		}
		if word == "MOVED" {
			return movedTo, slot, addr
		}
		return askTo, slot, addr
	case "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "UNBLOCKED":
		return tryAgain, 0, ""
	}
	return noRedirect, 0, ""
}
