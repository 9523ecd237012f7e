// Command overlay-proxy serves containerd's own overlay snapshotter
// (snapshots/overlay, with the options containerd's builtin overlayfs plugin
// uses by default) over containerd's snapshots gRPC API on a unix socket:
// a proxy plugin written the way a Go snapshotter is, the reference the
// snapshotter benchmark compares nix-snapshotter with.
//
//	overlay-proxy ROOT SOCKET
//
// Built offline by bench/snapshotter/go-proxy.sh from Debian's packaged Go
// sources of containerd 1.7; stops on SIGTERM or SIGINT.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/snapshots/overlay"
	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: overlay-proxy ROOT SOCKET")
		os.Exit(2)
	}
	root, socket := os.Args[1], os.Args[2]
	// containerd's builtin plugin removes directories in Cleanup, not in
	// Remove, unless sync_remove is set (snapshots/overlay/plugin).
	sn, err := overlay.NewSnapshotter(root, overlay.AsynchronousRemove)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-proxy: %v\n", err)
		os.Exit(1)
	}
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlay-proxy: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		srv.GracefulStop()
	}()
	if err := srv.Serve(l); err != nil {
		fmt.Fprintf(os.Stderr, "overlay-proxy: %v\n", err)
		os.Exit(1)
	}
	if err := sn.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "overlay-proxy: %v\n", err)
		os.Exit(1)
	}
}
