//go:build race

package pipeline

// raceEnabled: the race detector's shadow memory multiplies RSS, so
// memory bounds are not checked under it.
const raceEnabled = true
