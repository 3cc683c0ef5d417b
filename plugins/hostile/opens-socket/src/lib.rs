//! Attack: open a network connection to exfiltrate data.
hostile_common::fixture!("opens-socket", {
    let (_, fuel) = hostile_common::first_trip()?;
    let mut stream = std::net::TcpStream::connect("127.0.0.1:9").map_err(|e| e.to_string())?;
    std::io::Write::write_all(&mut stream, &fuel.to_le_bytes()).map_err(|e| e.to_string())?;
    Ok(())
});
