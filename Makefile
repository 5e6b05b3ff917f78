# Contract and code checks. `make check` is what .ci/run runs besides the tests.
BUF := go run github.com/bufbuild/buf/cmd/buf@v1.75.0

.PHONY: generate lint check test image
generate:
	$(BUF) format -w
	rm -rf gen
	$(BUF) generate
	go run ./tools/asyncapi

lint:
	$(BUF) lint
	$(BUF) format -d --exit-code
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	go vet ./...

test:
	go test -race ./...

# The container image, built with no Docker daemon: build/image/oci and build/image/throughcare.tar.
# IMAGE_FLAGS passes flags on, e.g. make image IMAGE_FLAGS="-arch arm64 -out build/image-arm64".
image:
	go run ./tools/image $(IMAGE_FLAGS)
