// Command fakecri serves Kubernetes' own fake CRI runtime on a unix socket, so that a real
// kubelet admits pods, asks the device plugin for devices and records them (PodResources)
// without running any container.
//
// Three gaps of the upstream fake are closed here, each found by running a real kubelet
// against it:
//   - images get a non-zero size (the kubelet refuses a zero-sized image: ImageInspectError);
//   - an image filesystem is reported (else the eviction manager logs an error every 10 s);
//   - every container gets a real log path inside the pod's log directory. With an empty
//     path the kubelet, on removing the container, deletes "<log path>*", that is files in
//     its own working directory.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	kubeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

const fakeImageSize = 4 << 20

type runtime struct {
	*fake.RemoteRuntime
	fsRoot string
}

// CreateContainer records a log path that lies inside the pod's log directory, and creates
// the file, so that whatever the kubelet later removes by that path is ours.
func (r *runtime) CreateContainer(ctx context.Context, req *kubeapi.CreateContainerRequest) (*kubeapi.CreateContainerResponse, error) {
	resp, err := r.RemoteRuntime.CreateContainer(ctx, req)
	if err != nil {
		return nil, err
	}
	logDir := req.GetSandboxConfig().GetLogDirectory()
	logPath := req.GetConfig().GetLogPath()
	if logDir == "" || logPath == "" {
		return nil, fmt.Errorf("fakecri: container %q has no log directory/path (dir=%q path=%q)",
			req.GetConfig().GetMetadata().GetName(), logDir, logPath)
	}
	full := filepath.Join(logDir, logPath)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(full, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	_ = f.Close()
	svc := r.RuntimeService
	svc.Lock()
	if c, ok := svc.Containers[resp.ContainerId]; ok {
		c.LogPath = full
	}
	svc.Unlock()
	return resp, nil
}

func (r *runtime) ImageFsInfo(ctx context.Context, req *kubeapi.ImageFsInfoRequest) (*kubeapi.ImageFsInfoResponse, error) {
	usage := []*kubeapi.FilesystemUsage{{
		Timestamp:  time.Now().UnixNano(),
		FsId:       &kubeapi.FilesystemIdentifier{Mountpoint: r.fsRoot},
		UsedBytes:  &kubeapi.UInt64Value{Value: fakeImageSize},
		InodesUsed: &kubeapi.UInt64Value{Value: 1},
	}}
	return &kubeapi.ImageFsInfoResponse{ImageFilesystems: usage, ContainerFilesystems: usage}, nil
}

func main() {
	endpoint := flag.String("listen", "", "unix socket path to serve the CRI on")
	fsRoot := flag.String("fs-root", "", "directory reported as the image filesystem")
	flag.Parse()
	if *endpoint == "" || *fsRoot == "" {
		fmt.Fprintln(os.Stderr, "usage: fakecri --listen /path/cri.sock --fs-root DIR")
		os.Exit(2)
	}
	if err := os.MkdirAll(*fsRoot, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "fakecri:", err)
		os.Exit(1)
	}
	_ = os.Remove(*endpoint)

	base := fake.NewFakeRemoteRuntime()
	base.ImageService.SetFakeImageSize(fakeImageSize)
	r := &runtime{RemoteRuntime: base, fsRoot: *fsRoot}
	// Register our wrapper, not the embedded runtime, so the overrides above are served.
	srv := newServer(r)
	if err := srv.start("unix://" + *endpoint); err != nil {
		fmt.Fprintln(os.Stderr, "fakecri:", err)
		os.Exit(1)
	}
	// The runtime reports itself and its network ready, as the upstream fake does in Start.
	base.RuntimeService.FakeStatus = &kubeapi.RuntimeStatus{Conditions: []*kubeapi.RuntimeCondition{
		{Type: kubeapi.RuntimeReady, Status: true},
		{Type: kubeapi.NetworkReady, Status: true},
	}}
	fmt.Printf("fakecri: serving on %s\n", *endpoint)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	srv.stop()
	_ = os.Remove(*endpoint)
}
