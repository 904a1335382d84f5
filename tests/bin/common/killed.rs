//! A child process killed when the test ends, however it ends (a failed assertion must not
//! leave an actuator running).

pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
