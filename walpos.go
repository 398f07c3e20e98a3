package sqliteproxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
)

// Where Litestream stands in a tenant's WAL. Its last level-0 LTX file
// beside the database records the WAL it was made from (the header's
// salts) and where in it it ended (offset + size); a commit SQLite wrote
// after that point is in no LTX file yet, and so in no replica, until
// Litestream next syncs. The LTX positions alone cannot show it: a copy
// whose service and Litestream were killed together, or whose Litestream
// is down, looks in sync while it holds acknowledged commits the replica
// lacks.

const (
	walHeaderSize      = 32
	walFrameHeaderSize = 24
	ltxHeaderSize      = 100
)

// walPending reports whether the WAL of the database at p holds a commit
// that Litestream's last level-0 LTX file beside it (the one named by
// txid) does not cover. No WAL, or no LTX file: false.
func walPending(p string, txid uint64) (bool, error) {
	if txid == 0 {
		return false, nil
	}
	name := fmt.Sprintf("%016x-%016x.ltx", txid, txid)
	hdr, err := readPrefix(path.Join(metaDir(p), "ltx", "0", name), ltxHeaderSize)
	if errors.Is(err, os.ErrNotExist) {
		// Compacted locally or named otherwise: only a file of one
		// transaction tells where in the WAL Litestream stopped.
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if string(hdr[:4]) != "LTX1" {
		return false, fmt.Errorf("%s: not an LTX file", name)
	}
	end := int64(binary.BigEndian.Uint64(hdr[48:])) + int64(binary.BigEndian.Uint64(hdr[56:]))
	salt1, salt2 := binary.BigEndian.Uint32(hdr[64:]), binary.BigEndian.Uint32(hdr[68:])
	last, s1, s2, err := lastWALCommit(p + "-wal")
	if err != nil || last == 0 {
		return false, err
	}
	if s1 != salt1 || s2 != salt2 {
		return true, nil // the WAL restarted since, and holds a commit
	}
	return last > end, nil
}

// readPrefix reads the first n bytes of the file at p.
func readPrefix(p string, n int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("read %s: %w", path.Base(p), err)
	}
	return b, nil
}

// lastWALCommit returns where the last valid commit frame of the WAL file
// at p ends (0: none, or no WAL) and the salts of the WAL's header. A frame
// is valid as SQLite's recovery takes it: its salts are the header's and
// its checksum continues the running checksum from the header on.
func lastWALCommit(p string) (end int64, salt1, salt2 uint32, err error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return 0, 0, 0, nil
	}
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	hdr := make([]byte, walHeaderSize)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, 0, 0, nil // shorter than a header: nothing committed
	}
	magic := binary.BigEndian.Uint32(hdr)
	if magic&^1 != 0x377f0682 {
		return 0, 0, 0, nil // not (yet) a WAL: SQLite ignores it too
	}
	var order binary.ByteOrder = binary.LittleEndian
	if magic&1 == 1 {
		order = binary.BigEndian
	}
	pageSize := int(binary.BigEndian.Uint32(hdr[8:]))
	if pageSize == 1 {
		pageSize = 65536
	}
	salt1, salt2 = binary.BigEndian.Uint32(hdr[16:]), binary.BigEndian.Uint32(hdr[20:])
	s0, s1 := walChecksum(order, hdr[:24], 0, 0)
	if s0 != binary.BigEndian.Uint32(hdr[24:]) || s1 != binary.BigEndian.Uint32(hdr[28:]) {
		return 0, salt1, salt2, nil
	}
	frame := make([]byte, walFrameHeaderSize+pageSize)
	for off := int64(walHeaderSize); ; off += int64(len(frame)) {
		if _, err := io.ReadFull(r, frame); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return end, salt1, salt2, nil
			}
			return 0, 0, 0, err
		}
		if binary.BigEndian.Uint32(frame[8:]) != salt1 || binary.BigEndian.Uint32(frame[12:]) != salt2 {
			return end, salt1, salt2, nil
		}
		s0, s1 = walChecksum(order, frame[:8], s0, s1)
		s0, s1 = walChecksum(order, frame[walFrameHeaderSize:], s0, s1)
		if s0 != binary.BigEndian.Uint32(frame[16:]) || s1 != binary.BigEndian.Uint32(frame[20:]) {
			return end, salt1, salt2, nil
		}
		if binary.BigEndian.Uint32(frame[4:]) != 0 { // a commit frame
			end = off + int64(len(frame))
		}
	}
}

// walChecksum continues SQLite's WAL checksum (s0, s1) over b, whose
// 32-bit words are in the byte order the WAL's magic number names.
func walChecksum(order binary.ByteOrder, b []byte, s0, s1 uint32) (uint32, uint32) {
	for i := 0; i+8 <= len(b); i += 8 {
		s0 += order.Uint32(b[i:]) + s1
		s1 += order.Uint32(b[i+4:]) + s0
	}
	return s0, s1
}
