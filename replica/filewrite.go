package replica

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/benbjohnson/litestream"
	"github.com/benbjohnson/litestream/file"
	"github.com/superfly/ltx"
)

// ownTmpClient is a file:// replica client that writes each LTX file under a
// temporary name of its own before renaming it into place. Litestream's
// file client writes to <name>.tmp: a compaction here and Litestream's own
// compaction of a tenant it streams wrote the same level file through one
// temporary file at once, truncating each other's writes, and a corrupt
// file took the name (Litestream's next compaction failed reading it: "read
// compressed data: EOF"; this one's rename failed: "no such file"). With a
// temporary file each, the last rename wins and every file is whole.
type ownTmpClient struct {
	*file.ReplicaClient
}

// withOwnTmp returns client, or, for a file:// replica, ownTmpClient.
func withOwnTmp(client litestream.ReplicaClient) litestream.ReplicaClient {
	if fc, ok := client.(*file.ReplicaClient); ok {
		return ownTmpClient{fc}
	}
	return client // S3: a PUT replaces an object whole
}

func (c ownTmpClient) WriteLTXFile(ctx context.Context, level int, minTXID, maxTXID ltx.TXID, rd io.Reader) (_ *ltx.FileInfo, err error) {
	hdr, rd, err := ltx.PeekHeader(rd)
	if err != nil {
		return nil, fmt.Errorf("extract timestamp from LTX header: %w", err)
	}
	timestamp := time.UnixMilli(hdr.Timestamp).UTC()
	name := c.LTXFilePath(level, minTXID, maxTXID)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return nil, err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	tmp := name + ".tmp-sqliteproxy-" + hex.EncodeToString(b[:])
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(tmp)
		}
	}()
	n, err := io.Copy(f, rd)
	if err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, name); err != nil {
		return nil, err
	}
	if d, err := os.Open(filepath.Dir(name)); err == nil {
		d.Sync()
		d.Close()
	}
	if err := os.Chtimes(name, timestamp, timestamp); err != nil {
		return nil, err
	}
	return &ltx.FileInfo{Level: level, MinTXID: minTXID, MaxTXID: maxTXID, Size: n, CreatedAt: timestamp}, nil
}
