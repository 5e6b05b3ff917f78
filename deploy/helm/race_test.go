//go:build race

package helm_test

// raceBuild: the serve binary is built as the test is, so it reuses the same compiled
// packages.
const raceBuild = true
